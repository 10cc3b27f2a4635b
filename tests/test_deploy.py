"""Every deployment artifact of every supported combination passes the real tool made for it.

hadolint (Dockerfile), the compose-spec schema (compose.yaml), `systemd-analyze verify` and
`security --offline=yes` (units), kubernetes-validate and checkov (manifests), the GitHub
Actions workflow schema (CI), promtool (alert rules and the dashboard's queries). No
container is built or run: these machines have no Docker engine. Beside the tools, each
artifact is read for the promises the tools cannot see: the API starts after the
migrations, outlasts its in-flight requests on a stop, and runs a worker per CPU it may use.
"""

import json
import math
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml

from .baked import MISSING_LOCK, Project, features_of, run_without_uv
from .conftest import deployment_combinations, require_tool, supported_combinations

# The oldest Kubernetes the manifests support (the preStop sleep action), and the newest
# whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.31", "1.37")
CHECKOV_OFFLINE = {"CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE"}


@dataclass
class Bake:
    project: Project
    answers: dict[str, str]

    @property
    def path(self) -> Path:
        return self.project.path

    @property
    def name(self) -> str:
        """The deployment name: the image, the Kubernetes objects, the systemd units."""
        return self.path.name.replace("_", "-")

    @property
    def profile(self) -> dict[str, Any]:
        """The profiles' values: the scenario's file deep-merged over the base."""
        profiles = self.path / "src" / self.path.name / "profiles"
        base, scenario = (
            tomllib.loads((profiles / f"{name}.toml").read_text())
            for name in ("base", self.answers["scenario"])
        )
        return {
            key: base.get(key, {}) | value if isinstance(value, dict) else value
            for key, value in (base | scenario).items()
        }

    @property
    def celery(self) -> bool:
        return "jobs" in self.project.features

    @property
    def database(self) -> bool:
        return "database" in self.project.features

    @property
    def rooms(self) -> bool:
        """WebSocket rooms, which span workers and instances through Redis."""
        return "rooms" in self.project.features

    @property
    def redis(self) -> bool:
        return "redis" in self.project.features

    def read(self, relative: str) -> str:
        return (self.path / relative).read_text()

    def yaml(self, relative: str) -> Any:
        return yaml.safe_load(self.read(relative))

    def tool(self, *command: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run a checking tool in the project; its output is the failure message."""
        return self.project.run(require_tool(command[0]), *command[1:], **env)


def ids(answers: dict[str, str]) -> str:
    return "-".join(answers.values())


def with_celery(answers: dict[str, str]) -> bool:
    return "jobs" in features_of(answers)


def tiered(combinations: list[dict[str, str]]) -> list[Any]:
    """The combinations; one per scenario, kubernetes and use_celery answer also make the
    quick tier (the others differ only in the Python version's number)."""
    quick = deployment_combinations()
    return [
        pytest.param(answers, marks=pytest.mark.quick) if answers in quick else answers
        for answers in combinations
    ]


SUPPORTED = supported_combinations()
COMBINATIONS = tiered(SUPPORTED)
WITH_KUBERNETES = tiered([answers for answers in SUPPORTED if answers["kubernetes"] == "yes"])
WITH_CELERY = tiered([answers for answers in SUPPORTED if with_celery(answers)])


@pytest.fixture(params=COMBINATIONS, ids=ids)
def baked(request: pytest.FixtureRequest, bake: Callable[[dict[str, str]], Project]) -> Bake:
    return Bake(bake(request.param), request.param)


@pytest.fixture(params=WITH_KUBERNETES, ids=ids)
def kubernetes(request: pytest.FixtureRequest, bake: Callable[[dict[str, str]], Project]) -> Bake:
    return Bake(bake(request.param), request.param)


@pytest.fixture(params=WITH_CELERY, ids=ids)
def celery(request: pytest.FixtureRequest, bake: Callable[[dict[str, str]], Project]) -> Bake:
    return Bake(bake(request.param), request.param)


def seconds(duration: str | int) -> int:
    """A duration as compose or systemd writes it ("45s", "45"), in seconds."""
    return int(str(duration).removesuffix("s"))


def passed(result: subprocess.CompletedProcess[str]) -> tuple[int, str]:
    return result.returncode, result.stdout + result.stderr


# Docker ---------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint_with_no_unexplained_ignore(baked: Bake) -> None:
    result = baked.tool("hadolint", "Dockerfile")
    lines = baked.read("Dockerfile").splitlines()
    unexplained = [
        line
        for previous, line in zip(["", *lines], lines, strict=False)
        if "hadolint ignore=" in line and not previous.startswith("#")
    ]

    assert passed(result) == (0, "")
    assert unexplained == []
    assert not (baked.path / ".hadolint.yaml").exists()


def excluded_from_build_context(baked: Bake, path: str) -> bool:
    """Docker's rule for .dockerignore: the last pattern that matches the path decides."""
    excluded = False
    for line in baked.read(".dockerignore").splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/").removeprefix("**/")
        if any(fnmatch(part, pattern) for part in [path, *Path(path).parts]):
            excluded = not negated
    return excluded


def copied_from_context(baked: Bake) -> list[str]:
    """The sources of the Dockerfile's COPY instructions from the build context."""
    return [
        source
        for line in baked.read("Dockerfile").splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for source in line.split()[1:-1]
    ]


def test_build_context_holds_what_the_dockerfile_copies_and_no_secret(baked: Bake) -> None:
    sources = copied_from_context(baked)
    # A pattern (uv.loc[k]) copies what it matches, and nothing where nothing matches.
    literal = [source for source in sources if not re.search(r"[*?[]", source)]
    matched = [
        str(path.relative_to(baked.path))
        for source in sources
        for path in (baked.path.glob(source) if source not in literal else [])
    ]
    missing = [source for source in literal if not (baked.path / source).exists()]
    ignored = [path for path in literal + matched if excluded_from_build_context(baked, path)]
    kept_out = [".env", ".venv", "var", "tests", ".git", "src/pkg/__pycache__"]

    assert {"pyproject.toml", "src", "gunicorn.conf.py"} <= set(sources)
    assert ("migrations" in sources) == baked.database
    assert (missing, ignored) == ([], [])
    assert [path for path in kept_out if not excluded_from_build_context(baked, path)] == []


def test_image_installs_exactly_the_locked_versions(baked: Bake) -> None:
    dockerfile = baked.read("Dockerfile")
    uv_commands = re.findall(r"\buv (?:sync|pip|lock|add|run)\b[^\n\\]*", dockerfile)

    assert "uv.loc[k]" in copied_from_context(baked)
    assert not excluded_from_build_context(baked, "uv.lock")
    # The dependencies, then the project itself, never editable: the final stage copies
    # only the environment.
    assert [command.strip() for command in uv_commands] == [
        "uv sync --locked --no-dev --no-install-project",
        "uv sync --locked --no-dev --no-editable",
    ]


def run_instruction_after(baked: Bake, instruction: str) -> str:
    """The shell command of the RUN that follows `instruction`, as Docker hands it to sh."""
    lines = baked.read("Dockerfile").splitlines()
    start = lines.index(instruction) + 1
    end = next(i for i in range(start, len(lines)) if not lines[i].endswith("\\"))
    command = "".join(line.removesuffix("\\") for line in lines[start : end + 1])
    assert command.startswith("RUN ")
    return re.sub(r"^RUN (--mount=\S+ +)*", "", command)


def test_image_build_stops_with_one_line_when_there_is_no_lock(baked: Bake, tmp_path: Path) -> None:
    # The build stage's install step, run by sh as Docker runs it, where the COPY before it
    # found no uv.lock; no uv on PATH, so nothing could be resolved instead.
    install = run_instruction_after(baked, "COPY pyproject.toml uv.loc[k] ./")
    (tmp_path / "pyproject.toml").write_text(baked.read("pyproject.toml"))

    result = run_without_uv(["/bin/sh", "-c", install], tmp_path)

    assert (result.returncode, result.stdout, result.stderr) == (1, "", MISSING_LOCK + "\n")


def test_image_runs_gunicorn_as_pid_1_unprivileged_without_build_tools(baked: Bake) -> None:
    lines = baked.read("Dockerfile").splitlines()
    final_stage = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")) :]
    instructions = [line.split()[0] for line in final_stage if line[:1].isupper()]

    assert final_stage[-1] == f'CMD ["python", "-m", "{baked.project.path.name}.serve"]'
    assert "ENTRYPOINT" not in instructions
    assert "USER 10001:10001" in final_stage
    assert any(line.startswith("HEALTHCHECK") for line in final_stage)
    assert "/health/live" in baked.read("Dockerfile")
    assert not [line for line in final_stage if re.search(r"\b(uv|gcc|build-essential)\b", line)]
    if "inference" in baked.project.features:  # the model is trained in the build stage
        assert "COPY --from=build /build/models ./models" in final_stage


# Compose --------------------------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_spec(baked: Bake) -> None:
    result = baked.tool(
        "check-jsonschema", "--builtin-schema", "vendor.compose-spec", "compose.yaml"
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_api_waits_for_migrations_and_outlasts_its_requests(baked: Bake) -> None:
    services = baked.yaml("compose.yaml")["services"]
    api = services["api"]

    assert seconds(api["stop_grace_period"]) > baked.profile["gunicorn"]["graceful_timeout"]
    assert float(api["deploy"]["resources"]["limits"]["cpus"]) >= 1
    if baked.database:
        assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]
        assert api["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert api["depends_on"]["postgres"] == {"condition": "service_healthy"}
        assert services["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    if baked.celery:
        worker = services["worker"]
        assert seconds(worker["stop_grace_period"]) > baked.profile["celery"]["time_limit"]
        assert float(worker["deploy"]["resources"]["limits"]["cpus"]) >= 1
        assert worker["depends_on"]["redis"] == {"condition": "service_healthy"}
    else:
        assert "worker" not in services
    if baked.redis:
        assert api["depends_on"]["redis"] == {"condition": "service_healthy"}
        assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    else:
        assert "redis" not in services
    if baked.rooms:  # more than one worker needs Redis for its rooms
        assert api["environment"]["REDIS_URL"] == "redis://redis:6379/0"


def test_compose_takes_its_secrets_from_an_uncommitted_env_file(baked: Bake) -> None:
    environment = baked.yaml("compose.yaml")["services"]["api"]["environment"]

    assert environment["SECRET_KEY"].startswith("${SECRET_KEY:?")
    assert ".env" in baked.read(".gitignore").splitlines()
    if baked.database:
        assert "${POSTGRES_PASSWORD:?" in environment["DATABASE_URL"]


# systemd --------------------------------------------------------------------------------


def units(baked: Bake) -> list[Path]:
    return sorted((baked.path / "deploy" / "systemd").glob("*.service"))


def service_section(unit: Path) -> dict[str, list[str]]:
    """The [Service] settings of a unit, each with every value it is given."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in unit.read_text().splitlines():
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def deployed_host(baked: Bake, root: Path) -> Path:
    """A file system root as a deployed host has it, for `systemd-analyze verify --root`.

    It holds the machine's own systemd units and the units under test. verify checks that
    the programs a unit runs exist and are executable: the machine's own are copied, and
    those the installation puts under /opt (deploy/README.md) are empty executables.
    """
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for directory in ("bin", "lib", "sbin"):
        (root / "usr" / directory).mkdir(exist_ok=True)
        (root / directory).symlink_to(f"usr/{directory}")
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in units(baked):
        shutil.copy(unit, root / "etc/systemd/system")
        commands = [
            value
            for key, values in service_section(unit).items()
            if key.startswith("Exec")
            for value in values
        ]
        for command in commands:
            program = Path(command.split()[0].lstrip("-@:+!"))
            target = root / program.relative_to("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if program.exists():
                shutil.copy(program, target)
            else:
                target.write_text("#!/bin/sh\n")
                target.chmod(0o755)
    return root


def test_systemd_units_follow_the_answers(baked: Bake) -> None:
    names = [unit.name for unit in units(baked)]

    assert names == sorted(
        [f"{baked.name}.service"] + [f"{baked.name}-worker.service"] * baked.celery
    )
    environment = baked.read(f"deploy/systemd/{baked.name}.env")
    assert ("\nREDIS_URL=redis://" in environment) == baked.rooms


def test_systemd_units_verify_clean(baked: Bake, tmp_path: Path) -> None:
    root = deployed_host(baked, tmp_path)

    for unit in units(baked):
        result = baked.tool("systemd-analyze", "verify", f"--root={root}", unit.name)
        assert passed(result) == (0, ""), unit.name


def test_systemd_units_expose_at_most_2_0(baked: Bake) -> None:
    exposure = {}
    for unit in units(baked):
        result = baked.tool("systemd-analyze", "security", "--offline=yes", str(unit))
        level = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
        assert result.returncode == 0, result.stdout + result.stderr
        assert level, result.stdout
        exposure[unit.name] = float(level.group(1))

    assert f"{baked.name}.service" in exposure
    assert max(exposure.values()) <= 2.0, exposure


def test_api_unit_reloads_on_sighup_and_stops_after_its_requests(baked: Bake) -> None:
    api = service_section(baked.path / "deploy" / "systemd" / f"{baked.name}.service")

    assert api["Type"] == ["notify"]
    assert api["ExecReload"] == ["/bin/kill -s HUP $MAINPID"]
    assert api["KillMode"] == ["mixed"]
    assert seconds(api["TimeoutStopSec"][0]) > baked.profile["gunicorn"]["graceful_timeout"]
    assert api["Restart"] == ["on-failure"]
    assert int(api["LimitNOFILE"][0]) >= 65536
    assert api["Environment"] == [f"PROMETHEUS_MULTIPROC_DIR=/run/{baked.name}/metrics"]
    assert api["RuntimeDirectory"] == [baked.name]


def test_worker_unit_yields_the_cpu_to_the_api_and_lets_jobs_finish(celery: Bake) -> None:
    api = service_section(celery.path / "deploy" / "systemd" / f"{celery.name}.service")
    worker = service_section(celery.path / "deploy" / "systemd" / f"{celery.name}-worker.service")

    assert int(worker["CPUWeight"][0]) < int(api["CPUWeight"][0])
    assert seconds(worker["TimeoutStopSec"][0]) > celery.profile["celery"]["time_limit"]
    assert f" --app {celery.path.name}.jobs.celery_app worker" in worker["ExecStart"][0]


# Kubernetes -----------------------------------------------------------------------------


OVERLAY = "deploy/overlays/production"


def manifests(baked: Bake) -> list[Path]:
    """The Kubernetes objects' files (not the kustomizations that list them)."""
    return sorted(
        path
        for path in (baked.path / "deploy" / "k8s").rglob("*.yaml")
        if path.name != "kustomization.yaml"
    )


def objects(baked: Bake) -> dict[str, dict[str, Any]]:
    """Every manifest's object, by kind and name."""
    return {
        f"{document['kind']}/{document['metadata']['name']}": document
        for manifest in manifests(baked)
        for document in yaml.safe_load_all(manifest.read_text())
    }


def test_kubernetes_manifests_follow_the_answers(baked: Bake) -> None:
    found = objects(baked)
    name = baked.name
    expected = {
        f"Namespace/{name}",
        f"ConfigMap/{name}",
        f"Deployment/{name}",
        f"Service/{name}",
        f"HorizontalPodAutoscaler/{name}",
        f"PodDisruptionBudget/{name}",
        f"NetworkPolicy/{name}",
    }
    expected |= {f"Job/{name}-migrate"} if baked.database else set()
    expected |= {f"Deployment/{name}-worker"} if baked.celery else set()

    assert set(found) == (expected if baked.answers["kubernetes"] == "yes" else set())


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_manifests_are_valid_against_the_schemas(kubernetes: Bake, version: str) -> None:
    files = [str(path.relative_to(kubernetes.path)) for path in manifests(kubernetes)]

    result = kubernetes.tool("kubernetes-validate", "--strict", "--quiet", "-k", version, *files)

    assert passed(result) == (0, "")


def test_kubernetes_policy_scan_fails_nothing_unexplained(kubernetes: Bake) -> None:
    result = kubernetes.tool(
        "checkov",
        "--skip-download",
        "--compact",
        "--framework",
        "kubernetes",
        "--output",
        "json",
        "--directory",
        "deploy/k8s",
        **CHECKOV_OFFLINE,
    )
    report = json.loads(result.stdout)["results"]
    scanned = {check["file_path"] for check in report["passed_checks"]}
    with_pods = {
        f"/{path.relative_to(kubernetes.path)}"
        for path in manifests(kubernetes)
        if "template:" in path.read_text()
    }

    assert [check["check_id"] for check in report["failed_checks"]] == []
    assert report["parsing_errors"] == []
    assert with_pods <= scanned
    assert all(check["check_result"]["suppress_comment"] for check in report["skipped_checks"])


def kustomize(baked: Bake, directory: str) -> list[dict[str, Any]]:
    """What `kubectl apply --kustomize directory` would apply, rendered by kubectl itself
    (which also refuses a kustomization with an unknown field or a value of the wrong type)."""
    result = baked.tool("kubectl", "kustomize", directory)
    assert result.returncode == 0, result.stderr
    return list(yaml.safe_load_all(result.stdout))


def images(documents: list[dict[str, Any]]) -> set[str]:
    """The image of every container (and init container) the objects run."""
    return {
        container["image"]
        for document in documents
        if "template" in document.get("spec", {})
        for key in ("containers", "initContainers")
        for container in document["spec"]["template"]["spec"].get(key, [])
    }


def key(document: dict[str, Any]) -> str:
    return f"{document['kind']}/{document['metadata']['name']}"


def test_kustomization_lists_every_manifest_and_names_the_image_once(kubernetes: Bake) -> None:
    k8s = kubernetes.path / "deploy" / "k8s"
    kustomization = kubernetes.yaml("deploy/k8s/kustomization.yaml")
    (image,) = kustomization["images"]

    rendered = kustomize(kubernetes, "deploy/k8s")

    listed = sorted(k8s / resource for resource in kustomization["resources"])

    assert listed == manifests(kubernetes)
    assert {key(document) for document in rendered} == set(objects(kubernetes))
    assert image["name"] == kubernetes.name
    assert images(rendered) == {f"{image['newName']}:{image['newTag']}"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kustomizations_render_objects_valid_against_the_schemas(
    kubernetes: Bake, version: str, tmp_path: Path
) -> None:
    for directory in ("deploy/k8s", OVERLAY):
        rendered = tmp_path / f"{directory.replace('/', '-')}.yaml"
        rendered.write_text(yaml.safe_dump_all(kustomize(kubernetes, directory)))

        result = kubernetes.tool(
            "kubernetes-validate", "--strict", "--quiet", "-k", version, str(rendered)
        )

        assert passed(result) == (0, ""), directory


def test_overlay_sets_its_image_everywhere_and_scales_the_api(kubernetes: Bake) -> None:
    overlay = kubernetes.yaml(f"{OVERLAY}/kustomization.yaml")
    (image,) = overlay["images"]

    rendered = {key(document): document for document in kustomize(kubernetes, OVERLAY)}
    api = rendered[f"Deployment/{kubernetes.name}"]["spec"]

    assert set(rendered) == set(objects(kubernetes))
    assert images(list(rendered.values())) == {f"{image['newName']}:{image['newTag']}"}
    assert (
        api["replicas"]
        == rendered[f"HorizontalPodAutoscaler/{kubernetes.name}"]["spec"]["minReplicas"]
    )
    (container,) = api["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["cpu"] == "4"


def guide_commands(baked: Bake) -> list[str]:
    """The shell commands of deploy/README.md's Kubernetes guide, continuation lines joined
    and comments dropped, in order."""
    section = baked.read("deploy/README.md").split("## A cluster: Kubernetes")[1]
    block = section.split("```sh\n")[1].split("```")[0]
    joined = re.sub(r"\s*\\\n\s*", " ", block)
    return [
        line.split("  #")[0].strip()
        for line in joined.splitlines()
        if line.strip() and not line.startswith("#")
    ]


def selected(documents: list[dict[str, Any]], selector: str | None) -> set[str]:
    """The objects a `--selector label=value` of kubectl keeps (all, without one)."""
    if selector is None:
        return {key(document) for document in documents}
    label, _, value = selector.partition("=")
    return {
        key(document)
        for document in documents
        if document["metadata"].get("labels", {}).get(label) == value
    }


def test_kubernetes_guide_pushes_names_the_image_then_migrates_before_the_api(
    kubernetes: Bake,
) -> None:
    commands = guide_commands(kubernetes)
    name = kubernetes.name
    index = {
        step: next(i for i, command in enumerate(commands) if command.startswith(prefix))
        for step, prefix in {
            "build": "docker build",
            "push": "docker push",
            "image": f"(cd {OVERLAY} && kustomize edit set image {name}=",
            "secret": f"kubectl --namespace {name} create secret",
            "rollout": f"kubectl --namespace {name} rollout status deployment/{name}",
        }.items()
    }
    applies = [
        (i, re.search(r"--selector (\S+)", command))
        for i, command in enumerate(commands)
        if command.startswith(f"kubectl apply --kustomize {OVERLAY}")
    ]
    rendered = kustomize(kubernetes, OVERLAY)
    steps = [selected(rendered, match.group(1) if match else None) for _, match in applies]
    migrate = {f"Job/{name}-migrate"} if kubernetes.database else set()

    # Every object applied is applied with the image named in step 2, after the push.
    assert index["build"] < index["push"] < index["image"] < applies[0][0]
    assert "@sha256:" in commands[index["image"]]
    assert steps[0] == {f"Namespace/{name}", f"ConfigMap/{name}"}
    assert applies[0][0] < index["secret"] < applies[1][0]
    if kubernetes.database:
        # The Job alone, waited for; then everything, the API last to change.
        assert steps[1:] == [migrate, set(objects(kubernetes))]
        wait = commands.index(
            f"kubectl --namespace {name} wait job/{name}-migrate --for=condition=complete "
            f"--timeout=10m || kubectl --namespace {name} logs job/{name}-migrate"
        )
        delete = commands.index(
            f"kubectl --namespace {name} delete job {name}-migrate --ignore-not-found"
        )
        assert delete < applies[1][0] < wait < applies[2][0]
    else:
        assert steps[1:] == [set(objects(kubernetes))]
    assert applies[-1][0] < index["rollout"]
    assert not [command for command in commands if "--filename" in command]


def workers_from_profile(baked: Bake, cpus: int) -> int:
    return int(
        baked.project.python(
            f"from {baked.path.name}.service_settings import ServiceSettings\n"
            f"from {baked.path.name}.settings import Settings\n"
            "settings = Settings(_env_file=None, web_concurrency=None)\n"
            f"print(ServiceSettings.workers_for(settings, {cpus})[0])"
        )
    )


@pytest.mark.usefixtures("installed_venv")
def test_kubernetes_api_pods_match_the_profile_and_are_locked_down(kubernetes: Bake) -> None:
    deployment = objects(kubernetes)[f"Deployment/{kubernetes.name}"]
    pod = deployment["spec"]["template"]["spec"]
    (api,) = pod["containers"]
    env = {variable["name"]: variable for variable in api["env"]}
    cpu_limit = math.ceil(float(api["resources"]["limits"]["cpu"]))
    graceful_timeout = kubernetes.profile["gunicorn"]["graceful_timeout"]
    stop_budget = api["lifecycle"]["preStop"]["sleep"]["seconds"] + graceful_timeout

    assert env["WEB_CONCURRENCY"]["valueFrom"]["resourceFieldRef"] == {
        "containerName": api["name"],
        "resource": "limits.cpu",
        "divisor": "1",
    }
    assert workers_from_profile(kubernetes, cpu_limit) == cpu_limit
    assert api["resources"]["requests"]["cpu"]
    assert pod["terminationGracePeriodSeconds"] > stop_budget
    assert api["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert api["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert api["securityContext"]["readOnlyRootFilesystem"] is True
    assert api["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {mount["mountPath"] for mount in api["volumeMounts"]} == {"/tmp", "/dev/shm"}
    assert env["SECRET_KEY"]["valueFrom"]["secretKeyRef"]["name"] == kubernetes.name
    assert api["envFrom"] == [{"configMapRef": {"name": kubernetes.name}}]
    # Pods of a websocket service share their rooms through Redis.
    assert ("REDIS_URL" in env) == kubernetes.rooms


def test_kubernetes_worker_lets_jobs_finish(
    celery: Bake, bake: Callable[[dict[str, str]], Project]
) -> None:
    answers = {**celery.answers, "kubernetes": "yes"}
    celery = Bake(bake(answers), answers)

    pod = objects(celery)[f"Deployment/{celery.name}-worker"]["spec"]["template"]["spec"]

    assert pod["terminationGracePeriodSeconds"] > celery.profile["celery"]["time_limit"]
    assert pod["containers"][0]["command"][:3] == [
        "celery",
        "--app",
        f"{celery.path.name}.jobs.celery_app",
    ]


# CI, alerts, dashboard ------------------------------------------------------------------


CI_WORKFLOW = ".github/workflows/ci.yml"


def test_ci_workflow_is_valid_against_the_github_workflow_schema(baked: Bake) -> None:
    workflow = CI_WORKFLOW
    jobs = baked.yaml(workflow)["jobs"]

    result = baked.tool("check-jsonschema", "--builtin-schema", "vendor.github-workflows", workflow)

    assert result.returncode == 0, result.stdout + result.stderr
    assert [step["run"] for job in jobs.values() for step in job["steps"] if "run" in step] == [
        "uv lock --check",
        "make lint",
        "make test",
        f"docker build --tag {baked.name}:ci .",
    ]
    test = jobs["test"]
    # The services the tests use, and no other: none for a service that needs none.
    assert set(test.get("services", {})) == services_used(baked) - {"celery"}
    assert set(test.get("env", {})) == {
        variable
        for variable, service in {
            "DATABASE_URL": "postgres",
            "CELERY_BROKER_URL": "celery",
            "REDIS_URL": "rooms",
        }.items()
        if service in services_used(baked) | ({"rooms"} if baked.rooms else set())
    }
    assert ("PostgreSQL" in test["name"], "Redis" in test["name"]) == (baked.database, baked.redis)


def services_used(baked: Bake) -> set[str]:
    return {
        service
        for service, used in {
            "postgres": baked.database,
            "redis": baked.redis,
            "celery": baked.celery,
        }.items()
        if used
    }


def test_guides_and_ci_name_only_the_services_the_service_uses(baked: Bake) -> None:
    texts = [baked.read(path) for path in ("README.md", "deploy/README.md", CI_WORKFLOW)]
    named = {
        service
        for text in texts
        for service, words in {
            "postgres": ("PostgreSQL", "DATABASE_URL", "postgres:"),
            "redis": ("Redis", "REDIS_URL", "redis:"),
            "celery": ("Celery", "CELERY_BROKER_URL"),
        }.items()
        if any(word in text for word in words)
    }

    assert named == services_used(baked)


def test_alert_rules_pass_promtool_and_fire_in_its_unit_tests(baked: Bake) -> None:
    check = baked.tool("promtool", "check", "rules", "deploy/prometheus/alerts.yml")
    unit_tests = baked.tool("promtool", "test", "rules", "deploy/prometheus/alerts.test.yml")

    assert check.returncode == 0, check.stdout + check.stderr
    assert unit_tests.returncode == 0, unit_tests.stdout + unit_tests.stderr


def dashboard_queries(baked: Bake) -> list[str]:
    dashboard = json.loads(baked.read("deploy/grafana/dashboard.json"))
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_dashboard_queries_are_valid_promql(baked: Bake, tmp_path: Path) -> None:
    # Grafana's variables, as Grafana would fill them in.
    queries = [
        query.replace("$__rate_interval", "1m").replace("$job", baked.name)
        for query in dashboard_queries(baked)
    ]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"panel_query_{i}", "expr": q} for i, q in enumerate(queries)],
            }
        ]
    }
    (tmp_path / "dashboard.rules.yml").write_text(yaml.safe_dump(rules))

    result = baked.tool("promtool", "check", "rules", str(tmp_path / "dashboard.rules.yml"))

    assert [query for query in queries if "$" in query] == []
    assert result.returncode == 0, result.stdout + result.stderr


EXPORTED_SERIES = """
import importlib.util
import {package}.main  # the app's modules register their metrics as they are imported
from {package}.serving.metrics import highr
from prometheus_client import REGISTRY
highr()  # made as a worker starts
families = list(REGISTRY.collect())
if importlib.util.find_spec("{package}.jobs"):  # read from the broker at each scrape
    from {package}.jobs.metrics import QueueLengths
    families += QueueLengths(lambda: None).collect()
SUFFIXES = {{
    "counter": ["_total"],
    "histogram": ["_bucket", "_sum", "_count"],
    "summary": ["_sum", "_count"],
}}
for family in families:
    for suffix in SUFFIXES.get(family.type, [""]):
        print(family.name + suffix)
"""


def metric_names(query: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', query)
    return set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", without_strings))


@pytest.mark.usefixtures("installed_venv")
def test_dashboard_and_alerts_name_only_metrics_the_service_exports(baked: Bake) -> None:
    exported = set(baked.project.python(EXPORTED_SERIES.format(package=baked.path.name)).split())
    alerts = baked.yaml("deploy/prometheus/alerts.yml")
    used = {
        name
        for query in dashboard_queries(baked)
        + [rule["expr"] for group in alerts["groups"] for rule in group["rules"]]
        for name in metric_names(query)
    }

    assert {"http_requests_total", "http_request_duration_highr_seconds_bucket"} <= used
    assert used - exported == {"up"}  # `up` is Prometheus's own, one per scrape target
