"""Shape the baked project to the answers: choose the scenario's profile, prune the rest.

What belongs to which answer is data, in MANIFEST below; nothing else here decides.
"""

import shutil
from pathlib import Path

SLUG = "{{ cookiecutter.project_slug }}"
NAME = "{{ cookiecutter.__service_name }}"
ANSWERS = {
    "scenario": "{{ cookiecutter.scenario }}",
    "use_celery": "{{ cookiecutter.use_celery }}",
    "database": "{{ cookiecutter.database }}",
    "kubernetes": "{{ cookiecutter.kubernetes }}",
}
PACKAGE = Path("src") / SLUG

# path (relative to the project) -> the answers under which it is kept; a file comes
# before the folder that holds it
MANIFEST: dict[Path, dict[str, set[str]]] = {
    # JSON request bodies: items, predictions and room messages; batch takes only uploads.
    PACKAGE / "bodies.py": {
        "scenario": {"public_api", "microservice", "ml_inference", "websocket"}
    },
    PACKAGE / "items": {"scenario": {"public_api", "microservice"}},
    Path("tests/test_items.py"): {"scenario": {"public_api", "microservice"}},
    PACKAGE / "inference": {"scenario": {"ml_inference"}},
    Path("tests/test_inference.py"): {"scenario": {"ml_inference"}},
    Path("bench/inference.py"): {"scenario": {"ml_inference"}},
    PACKAGE / "rooms": {"scenario": {"websocket"}},
    Path("tests/test_rooms.py"): {"scenario": {"websocket"}},
    Path("bench/fanout.py"): {"scenario": {"websocket"}},
    PACKAGE / "db.py": {"database": {"postgresql"}},
    Path("tests/test_database.py"): {"database": {"postgresql"}},
    Path("migrations"): {"database": {"postgresql"}},
    Path("alembic.ini"): {"database": {"postgresql"}},
    PACKAGE / "jobs": {"use_celery": {"yes"}},
    Path("tests/test_jobs.py"): {"use_celery": {"yes"}},
    Path("examples"): {"use_celery": {"yes"}},
    Path("bench/jobs.py"): {"use_celery": {"yes"}},
    Path(f"deploy/systemd/{NAME}-worker.service"): {"use_celery": {"yes"}},
    Path("deploy/k8s/worker.yaml"): {"use_celery": {"yes"}},
    Path("deploy/k8s/jobs"): {"database": {"postgresql"}},
    Path("deploy/k8s"): {"kubernetes": {"yes"}},
}


def keep(conditions: dict[str, set[str]]) -> bool:
    return all(ANSWERS[option] in values for option, values in conditions.items())


def prune() -> None:
    for path, conditions in MANIFEST.items():
        if not keep(conditions):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def choose_profile() -> None:
    """The scenario's profile becomes the project's only profile."""
    profiles = PACKAGE / "profiles"
    (profiles / f"{ANSWERS['scenario']}.toml").rename(PACKAGE / "profile.toml")
    shutil.rmtree(profiles)


def next_steps() -> str:
    serve = {
        "ml_inference": "install, train the model and serve",
        "websocket": "install and serve",
    }.get(ANSWERS["scenario"], "install, migrate and serve")
    test = "  make test    # its test suite"
    if ANSWERS["database"] != "none":
        test += "; DATABASE_URL=postgresql+asyncpg://... runs it on PostgreSQL"
    lines = [
        f"{SLUG} is ready ({ANSWERS['scenario']}).",
        "",
        f"  cd {SLUG}",
        f"  make run     # {serve} under Gunicorn on http://127.0.0.1:8000",
        test,
    ]
    if ANSWERS["use_celery"] == "yes":
        lines.append("  make worker  # a Celery worker alone (make run starts one beside Gunicorn)")
    return "\n".join(["", *lines, ""])


def write_lock() -> None:
    """Pin every dependency in uv.lock, as `make lock` does. Without uv, or without the
    package index, the bake still succeeds and says in one line that the lock is missing."""
    import importlib.util
    import os
    import subprocess
    import sys

    missing = 'uv.lock is missing: run "make lock" (it needs uv and the package index).'
    if uv := shutil.which("uv"):
        command = [uv]
    elif importlib.util.find_spec("uv"):  # installed beside cookiecutter (pip install uv)
        command = [sys.executable, "-m", "uv"]
    else:
        print(missing, file=sys.stderr)
        return
    # A bake fetches from the package index only: no Python is downloaded to lock with
    # (unless UV_PYTHON_DOWNLOADS says so); `make lock` uses the Makefile's Python.
    env = {"UV_PYTHON_DOWNLOADS": "never", **os.environ}
    lock = [*command, "lock", "--quiet"]
    try:
        result = subprocess.run(lock, env=env, capture_output=True, timeout=300, check=False)
    except subprocess.TimeoutExpired:
        result = None
    if result is None or result.returncode != 0:
        print(missing, file=sys.stderr)


if __name__ == "__main__":
    choose_profile()
    prune()
    print(next_steps())
    write_lock()
