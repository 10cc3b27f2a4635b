"""Refuse answers the template cannot honour, before a single file is written.

Each refusal is one sentence that names the bad answer and says what would work.
The rules are one pure function, problems(); only running this file as the hook acts on
them, so tests import it and call problems() with answers of their own.
"""

import json
import keyword
import re
import sys

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


def problems(answers: dict[str, str]) -> list[str]:
    """Every refusal the answers (keyed as ANSWERS is) earn, in order; none if they are good."""
    slug = answers["project_slug"]
    found = []
    if not slug.isidentifier() or not slug.isascii():
        found.append(
            f"project_slug {slug!r} is not a Python identifier: "
            "use letters, digits and underscores, not starting with a digit."
        )
    elif keyword.iskeyword(slug) or keyword.issoftkeyword(slug):
        found.append(f"project_slug {slug!r} is a Python keyword: choose another name.")
    elif slug in sys.stdlib_module_names:
        found.append(
            f"project_slug {slug!r} shadows the standard-library module of that name: "
            "choose another name."
        )
    elif slug in DEPENDENCIES:
        found.append(
            f"project_slug {slug!r} would hide the {slug} package the project depends on: "
            "choose another name."
        )
    if not found and not SERVICE_NAME.fullmatch(answers["service_name"]):
        found.append(
            f"project_slug {slug!r} gives the deployment name {answers['service_name']!r}, "
            "which must start with a letter and be at most 63 characters: choose another name."
        )
    scenario = answers["scenario"]
    for option in ("use_celery", "kubernetes"):
        if answers[option] not in YES_NO:
            found.append(f"{option} {answers[option]!r} is not an answer: say yes or no.")
    row = json.loads(answers["scenarios"])[scenario]
    if row["serves"] == "jobs" and answers["use_celery"] == "no":
        found.append(f"scenario {scenario!r} runs its jobs on Celery: answer use_celery=yes.")
    if row["database"] == "refused":
        if answers["database"] != "none":
            found.append(
                f"scenario {scenario!r} {row['does']} and keeps no data: "
                "answer database=none (its default)."
            )
        elif answers["use_celery"] == "yes":
            found.append(
                f"scenario {scenario!r} keeps no data, and Celery jobs live in a database "
                "table: answer use_celery=no."
            )
    elif answers["database"] == "none" and row["serves"] != "jobs":
        found.append(
            f"scenario {scenario!r} {row['does']} in a database: answer database=postgresql."
        )
    elif answers["database"] == "none" and answers["use_celery"] == "yes":
        found.append(
            "use_celery=yes keeps its jobs in a database table: answer database=postgresql."
        )
    return found


if __name__ == "__main__":
    found = problems(ANSWERS)
    for problem in found:
        print(f"ERROR: {problem}", file=sys.stderr)
    sys.exit(1 if found else 0)
