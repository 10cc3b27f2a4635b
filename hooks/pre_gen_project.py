"""Refuse answers the template cannot honour, before a single file is written.

Each refusal is one sentence, worded for the prompts a person answered: it names the
question (its prompt in cookiecutter.json), the answer given and what would work. The rules
are one pure function, problems(); only running this file as the hook acts on them, so
tests import it and call problems() with answers and prompts of their own.
"""

import json
import keyword
import os
import re
import sys
from pathlib import Path
from typing import Any

# Cookiecutter renders these before it runs the hook; imported unrendered (as the tests do),
# they are the placeholders themselves, which nothing at import looks at.
ANSWERS = {
    "project_slug": "{{ cookiecutter.project_slug }}",
    "scenario": "{{ cookiecutter.scenario }}",
    "use_celery": "{{ cookiecutter.use_celery }}",
    "database": "{{ cookiecutter.database }}",
    "kubernetes": "{{ cookiecutter.kubernetes }}",
    "service_name": "{{ cookiecutter.__service_name }}",
    # What each scenario serves and whether it keeps data: cookiecutter.json's table.
    "scenarios": """{{ cookiecutter._scenarios | tojson }}""",
    # The template's folder, whose cookiecutter.json holds the prompts.
    "template": "{{ cookiecutter._repo_dir }}",
}

# Cookiecutter itself refuses answers outside a choice list; these are the rules it cannot
# know: what a name may be, and which answers go together.
# The name of the image, the Kubernetes objects and the systemd units: a DNS label (RFC 1035).
SERVICE_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
YES_NO = ("yes", "no")
# Top-level packages a baked project imports: a project of the same name would hide them.
DEPENDENCIES = frozenset(
    {
        "aiosqlite",
        "alembic",
        "amqp",
        "asyncpg",
        "bench",
        "billiard",
        "celery",
        "fastapi",
        "gunicorn",
        "httptools",
        "httpx",
        "joblib",
        "kombu",
        "migrations",
        "mypy",
        "numpy",
        "prometheus_client",
        "pydantic",
        "pydantic_settings",
        "pytest",
        "python_multipart",
        "redis",
        "ruff",
        "scipy",
        "sklearn",
        "sqlalchemy",
        "starlette",
        "tests",
        "uvicorn",
        "uvicorn_worker",
        "uvloop",
        "websockets",
    }
)


class Prompts:
    """The prompts of cookiecutter.json (`__prompts__`): a refusal words the question and
    the answer as the person saw them."""

    def __init__(self, prompts: dict[str, Any]) -> None:
        self.prompts = prompts

    def question(self, key: str) -> str:
        prompt = self.prompts.get(key, key)
        return f'"{prompt["__prompt__"] if isinstance(prompt, dict) else prompt}"'

    def label(self, key: str, value: str) -> str:
        """A choice as the prompt listed it, or the answer as typed."""
        prompt = self.prompts.get(key)
        return str(prompt.get(value, value)) if isinstance(prompt, dict) else value

    def choice(self, key: str, value: str) -> str:
        return f'"{self.label(key, value)}"'

    def answered(self, key: str, value: str) -> str:
        return f"You answered {self.choice(key, value)} to {self.question(key)}"


def problems(answers: dict[str, str], prompts: dict[str, Any]) -> list[str]:
    """Every refusal the answers (keyed as ANSWERS is) earn, in order; none if they are good."""
    asked = Prompts(prompts)
    slug = answers["project_slug"]
    name = asked.answered("project_slug", slug)
    found = []
    if not slug.isidentifier() or not slug.isascii():
        found.append(
            f"{name}, which is not a Python identifier: "
            "use letters, digits and underscores, not starting with a digit."
        )
    elif keyword.iskeyword(slug) or keyword.issoftkeyword(slug):
        found.append(f"{name}, which is a Python keyword: choose another name.")
    elif slug in sys.stdlib_module_names:
        found.append(
            f"{name}, which would shadow the standard-library module of that name: "
            "choose another name."
        )
    elif slug in DEPENDENCIES:
        found.append(
            f"{name}, which would hide the {slug} package the project depends on: "
            "choose another name."
        )
    if not found and not SERVICE_NAME.fullmatch(answers["service_name"]):
        found.append(
            f"{name}, which gives the deployment name {answers['service_name']!r}: it must "
            "start with a letter and be at most 63 characters, so choose another name."
        )
    for option in ("use_celery", "kubernetes"):
        if answers[option] not in YES_NO:
            found.append(f'{asked.answered(option, answers[option])}: answer "yes" or "no".')
    scenario = answers["scenario"]
    row = json.loads(answers["scenarios"])[scenario]
    # "Public API: high request rate, ..." names the Public API scenario.
    the_scenario = f"the {asked.label('scenario', scenario).split(':')[0]} scenario"
    celery = asked.answered("use_celery", answers["use_celery"])
    stores = asked.answered("database", answers["database"])
    postgresql, none = asked.choice("database", "postgresql"), asked.choice("database", "none")
    database = answers["database"]
    if database == "default":  # what the scenario needs
        database = "none" if row["database"] == "refused" else "postgresql"
    if row["serves"] == "jobs" and answers["use_celery"] == "no":
        found.append(f'{celery}, but {the_scenario} runs its jobs on Celery: answer "yes".')
    if row["database"] == "refused":
        if database != "none":
            found.append(
                f"{stores}, but {the_scenario} {row['does']} and keeps no data: "
                f"choose {none}, or the default."
            )
        elif answers["use_celery"] == "yes":
            found.append(
                f"{celery}, but {the_scenario} keeps no data, and Celery jobs live in a "
                'database table: answer "no".'
            )
    elif database == "none" and row["serves"] != "jobs":
        found.append(
            f"{stores}, but {the_scenario} {row['does']} in a database: choose {postgresql}."
        )
    elif database == "none" and answers["use_celery"] == "yes":
        found.append(
            f'{stores}, but Celery jobs ("yes" to {asked.question("use_celery")}) live in a '
            f"database table: choose {postgresql}."
        )
    return found


def read_prompts(template: Path) -> dict[str, Any]:
    """cookiecutter.json's prompts. Cookiecutter names the template's folder as it was given,
    so a relative one is relative to where cookiecutter started (the shell's PWD), not to
    this hook's folder. Without the file, a refusal names the answer's key instead."""
    for folder in (template, Path(os.environ.get("PWD", ".")) / template):
        try:
            prompts: dict[str, Any] = json.loads((folder / "cookiecutter.json").read_text())
        except (OSError, ValueError):
            continue
        return prompts.get("__prompts__", {})
    return {}


if __name__ == "__main__":
    found = problems(ANSWERS, read_prompts(Path(ANSWERS["template"])))
    for problem in found:
        print(f"ERROR: {problem}", file=sys.stderr)
    sys.exit(1 if found else 0)
