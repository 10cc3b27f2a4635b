#!/usr/bin/env python3
"""The template's two commands. Needs nothing but Python 3.11+ and its pip.

python3 dev.py serve   bake the default scenario into .scratch/ and serve it under
                       Gunicorn on embedded defaults (SQLite; no other service needed)
python3 dev.py test    run the template's whole test suite; arguments go to pytest
python3 dev.py test --quick
                       the quick tier: the hooks' rules, every supported bake linted,
                       one baked suite and the deployment checks
"""

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TOOLS = ROOT / ".venv"
SCRATCH = ROOT / ".scratch"
# Tools from Debian's packages, unpacked here rather than installed (see debian_tools).
DEBIAN_TOOLS = ROOT / ".cache" / "debian-tools"


def run(*command: str | Path, cwd: Path = ROOT) -> None:
    subprocess.run([str(part) for part in command], cwd=cwd, check=True)


def tools() -> Path:
    """The template's own environment, with uv and the test tools installed."""
    if not (TOOLS / "bin" / "python").exists():
        venv.create(TOOLS, with_pip=True)
    uv = TOOLS / "bin" / "uv"
    if not uv.exists():
        run(TOOLS / "bin" / "python", "-m", "pip", "install", "--quiet", "uv")
    run(uv, "pip", "install", "--quiet", "--python", TOOLS / "bin" / "python", "--group", "dev")
    return TOOLS / "bin"


def debian_tools() -> Path:
    """promtool, which checks the generated Prometheus rules, and the Prometheus server,
    which tests/test_prometheus_live.py runs on loopback against baked services, from
    Debian's prometheus package.

    PyPI has neither. The package is downloaded and only those two programs are unpacked:
    installing it would also install, and on some machines start, a Prometheus service.
    systemd-analyze, the other tool the tests need from outside PyPI, comes with systemd.
    Where apt-get is missing, nothing is fetched and the tests that need promtool say so.
    """
    bin_dir = DEBIAN_TOOLS / "usr" / "bin"
    programs = ["promtool", "prometheus"]
    if all((bin_dir / name).exists() for name in programs) or shutil.which("apt-get") is None:
        return bin_dir
    downloads = DEBIAN_TOOLS / "downloads"
    shutil.rmtree(downloads, ignore_errors=True)
    downloads.mkdir(parents=True)
    fetch = subprocess.run(["apt-get", "download", "prometheus"], cwd=downloads, check=False)
    if fetch.returncode != 0:  # no package lists yet on a fresh machine
        run("apt-get", "update", "--quiet")
        run("apt-get", "download", "prometheus", cwd=downloads)
    (package,) = downloads.glob("prometheus_*.deb")
    contents = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", package], check=True, capture_output=True
    ).stdout
    subprocess.run(
        [
            "tar",
            "--extract",
            "--directory",
            DEBIAN_TOOLS,
            *(f"./usr/bin/{name}" for name in programs),
        ],
        input=contents,
        check=True,
    )
    shutil.rmtree(downloads)
    return bin_dir


def load_generator() -> None:
    """wrk, which tests/test_bench.py drives `make bench` with, from Debian's wrk package
    (a small client, no service). Where apt-get is missing the test says wrk is missing."""
    if shutil.which("wrk") or shutil.which("apt-get") is None:
        return
    install = ["apt-get", "install", "--yes", "--quiet", "--no-install-recommends", "wrk"]
    if subprocess.run(install, check=False).returncode != 0:  # no package lists yet
        run("apt-get", "update", "--quiet")
        run(*install)


def serve() -> None:
    bin_dir = tools()
    shutil.rmtree(SCRATCH, ignore_errors=True)
    run(bin_dir / "cookiecutter", ROOT, "--no-input", "--output-dir", SCRATCH)
    (project,) = (path for path in SCRATCH.iterdir() if path.is_dir())
    project_venv = project / ".venv"
    run(bin_dir / "uv", "venv", "--quiet", "--python", sys.executable, project_venv)
    run(
        bin_dir / "uv",
        "pip",
        "install",
        "--quiet",
        "--python",
        project_venv / "bin" / "python",
        "-e",
        project,
    )
    run(project_venv / "bin" / "alembic", "upgrade", "head", cwd=project)
    os.chdir(project)
    gunicorn = str(project_venv / "bin" / "gunicorn")
    os.execv(gunicorn, [gunicorn, "--config", "gunicorn.conf.py"])


def test(pytest_args: list[str]) -> None:
    load_generator()
    path = [tools(), debian_tools(), os.environ["PATH"]]
    env = {**os.environ, "PATH": os.pathsep.join(map(str, path))}
    if "--quick" in pytest_args:
        pytest_args = [arg for arg in pytest_args if arg != "--quick"]
        # A marker expression of the caller's narrows the quick tier.
        given = pytest_args.index("-m") if "-m" in pytest_args else None
        if given is None:
            pytest_args = ["-m", "quick", *pytest_args]
        else:
            pytest_args[given + 1] = f"quick and ({pytest_args[given + 1]})"
    # The tests spend most of their time waiting on servers they started: one xdist worker
    # per CPU, each taking the next test as it frees up. `-n 0` runs them one by one.
    if not any(arg.startswith(("-n", "--numprocesses")) for arg in pytest_args):
        pytest_args = ["--numprocesses", "auto", "--dist", "worksteal", *pytest_args]
    sys.exit(
        subprocess.run(
            [TOOLS / "bin" / "python", "-m", "pytest", *pytest_args], cwd=ROOT, env=env
        ).returncode
    )


if __name__ == "__main__":
    match sys.argv[1:]:
        case ["serve"]:
            serve()
        case ["test", *pytest_args]:
            test(pytest_args)
        case _:
            sys.exit(__doc__)
