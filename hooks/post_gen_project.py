"""Shape the baked project to the answers: keep its profiles, prune the rest, lock it.

What belongs to which feature is data, in MANIFEST below; nothing else here decides.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

SLUG = "{{ cookiecutter.project_slug }}"
NAME = "{{ cookiecutter.__service_name }}"
SCENARIO = "{{ cookiecutter.scenario }}"
# The features this project has, as cookiecutter.json derives them from the answers.
FEATURE_NAMES = "{{ cookiecutter.__features }}"
FEATURES = set(FEATURE_NAMES.split())
PACKAGE = Path("src") / SLUG

# path (relative to the project) -> the feature it belongs to; a file comes before the
# folder that holds it
MANIFEST: dict[Path, str] = {
    # JSON request bodies: items, predictions and room messages; jobs take only uploads.
    PACKAGE / "bodies.py": "json_bodies",
    PACKAGE / "items": "items",
    Path("tests/test_items.py"): "items",
    PACKAGE / "inference": "inference",
    Path("tests/test_inference.py"): "inference",
    Path("tests/fixtures/inference.py"): "inference",
    Path("bench/inference.py"): "inference",
    PACKAGE / "rooms": "rooms",
    Path("tests/test_rooms.py"): "rooms",
    Path("tests/fixtures/rooms.py"): "rooms",
    Path("bench/fanout.py"): "rooms",
    PACKAGE / "db.py": "database",
    PACKAGE / "db_settings.py": "database",
    PACKAGE / "schema_state.py": "database",
    Path("tests/test_database.py"): "database",
    Path("tests/test_migrations.py"): "database",
    Path("tests/fixtures/database.py"): "database",
    Path("migrations"): "database",
    Path("alembic.ini"): "database",
    PACKAGE / "jobs": "jobs",
    Path("tests/test_jobs.py"): "jobs",
    Path("tests/fixtures/jobs.py"): "jobs",
    Path("examples"): "jobs",
    Path("bench/jobs.py"): "jobs",
    Path(f"deploy/systemd/{NAME}-worker.service"): "jobs",
    Path("deploy/k8s/worker.yaml"): "jobs",
    Path("deploy/k8s/jobs"): "database",
    Path("deploy/k8s"): "kubernetes",
    Path("deploy/overlays"): "kubernetes",
}


def prune() -> None:
    for path, feature in MANIFEST.items():
        if feature not in FEATURES and path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def choose_profile() -> None:
    """The project keeps the base profile and its scenario's, which states what differs."""
    kept = {"base.toml", f"{SCENARIO}.toml"}
    for profile in (PACKAGE / "profiles").iterdir():
        if profile.name not in kept:
            profile.unlink()


def where_to_cd() -> str:
    """The project's folder as the shell that ran cookiecutter reaches it: relative to the
    directory that shell is in (PWD; cookiecutter runs this hook inside the project), or
    absolute when that is unknown or the project lies outside it."""
    project = Path.cwd()
    shell = os.environ.get("PWD", "")
    if shell and Path(shell).is_absolute() and project.is_relative_to(Path(shell).resolve()):
        return str(project.relative_to(Path(shell).resolve())) or "."
    return str(project)


def next_steps() -> str:
    if "inference" in FEATURES:
        serve = "install, train the model and serve"
    elif "database" in FEATURES:
        serve = "install, migrate and serve"
    else:
        serve = "install and serve"
    test = "  make test    # its test suite"
    if "database" in FEATURES:
        test += "; DATABASE_URL=postgresql+asyncpg://... runs it on PostgreSQL"
    lines = [
        f"{SLUG} is ready ({SCENARIO}).",
        "",
        f"  cd {where_to_cd()}",
        f"  make run     # {serve} under Gunicorn on http://127.0.0.1:8000",
        test,
    ]
    if "jobs" in FEATURES:
        lines.append("  make worker  # a Celery worker alone (make run starts one beside Gunicorn)")
    return "\n".join(["", *lines, ""])


def write_lock() -> None:
    """Pin every dependency in uv.lock, as `make lock` does. Without uv, or without the
    package index, the bake still succeeds and says in one line that the lock is missing."""
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
