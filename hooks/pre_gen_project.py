"""Refuse answers the template cannot honour, before a single file is written.

Each refusal is one sentence that names the bad answer and says what would work.
"""

import keyword
import sys

ANSWERS = {
    "project_slug": "{{ cookiecutter.project_slug }}",
    "scenario": "{{ cookiecutter.scenario }}",
    "use_celery": "{{ cookiecutter.use_celery }}",
    "database": "{{ cookiecutter.database }}",
    "kubernetes": "{{ cookiecutter.kubernetes }}",
    "python_version": "{{ cookiecutter.python_version }}",
}

SCENARIOS = ("public_api", "microservice")
SCENARIOS_WITH_ITEMS = ("public_api", "microservice")
YES_NO = ("yes", "no")
PYTHON_VERSIONS = ("3.11", "3.12", "3.13")


def problems(answers: dict[str, str]) -> list[str]:
    slug = answers["project_slug"]
    found = []
    if not slug.isidentifier() or not slug.isascii():
        found.append(
            f"project_slug {slug!r} is not a Python identifier: "
            "use lowercase letters, digits and underscores, starting with a letter."
        )
    elif keyword.iskeyword(slug) or keyword.issoftkeyword(slug):
        found.append(f"project_slug {slug!r} is a Python keyword: choose another name.")
    elif slug in sys.stdlib_module_names:
        found.append(
            f"project_slug {slug!r} shadows the standard-library module of that name: "
            "choose another name."
        )
    scenario = answers["scenario"]
    if scenario == "batch" and answers["use_celery"] == "no":
        found.append("scenario 'batch' runs its jobs on Celery: answer use_celery=yes.")
    elif scenario not in SCENARIOS:
        found.append(f"scenario {scenario!r} is unknown: choose one of {', '.join(SCENARIOS)}.")
    for option in ("use_celery", "kubernetes"):
        if answers[option] not in YES_NO:
            found.append(f"{option} {answers[option]!r} is not an answer: say yes or no.")
    if answers["use_celery"] == "yes" and scenario != "batch":
        found.append("use_celery=yes is not supported yet: Celery arrives with the batch scenario.")
    if answers["database"] not in ("postgresql", "none"):
        found.append(f"database {answers['database']!r} is unknown: choose postgresql or none.")
    elif answers["database"] == "none" and scenario in SCENARIOS_WITH_ITEMS:
        found.append(
            f"scenario {scenario!r} stores its /items resource in a database: "
            "answer database=postgresql."
        )
    if answers["kubernetes"] == "yes":
        found.append("kubernetes=yes is not supported yet: answer kubernetes=no.")
    if answers["python_version"] not in PYTHON_VERSIONS:
        found.append(
            f"python_version {answers['python_version']!r} is not supported: "
            f"choose one of {', '.join(PYTHON_VERSIONS)}."
        )
    return found


if __name__ == "__main__":
    found = problems(ANSWERS)
    for problem in found:
        print(f"ERROR: {problem}", file=sys.stderr)
    sys.exit(1 if found else 0)
