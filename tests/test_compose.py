"""docker-compose.yml, .env.example and the Dockerfile agree with the code they deploy (no Docker needed).

Each check is one a plausible edit breaks: a typo in a queue, a GPU block copied without changing its
number, a setting passed as an empty string, a health check that cannot pass while a worker trains.
"""

from __future__ import annotations

import re
import shlex
import socket
from typing import Any
from urllib.parse import urlparse

import pytest
import redis
import yaml

from app.cli import WORKER_COMMANDS, build_parser, check_worker, worker_command
from app.config import REPO_ROOT, Settings, get_settings
from app.queue import Queue

COMPOSE_TEXT = (REPO_ROOT / "docker-compose.yml").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)  # SafeLoader resolves `<<:` merges as Compose does
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
# Services that run the project's image (the others run postgres and redis).
PROJECT = {name: service for name, service in SERVICES.items() if "build" in service}
ONE_SHOT = {"migrate"}
LONG_RUNNING = [name for name in SERVICES if name not in ONE_SHOT]
WORKERS = {name: service for name, service in PROJECT.items() if service["command"][1:2] == ["worker"]}
ENV_EXAMPLE = (REPO_ROOT / ".env.example").read_text()
DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()

# Compose's own syntax: $$ is a literal $, else $NAME or ${NAME<op><arg>} (https://docs.docker.com/reference/compose-file/interpolation/)
VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<name>\w+)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}|(?P<bare>[A-Za-z_]\w*))")


def referenced_variables() -> dict[str, set[str]]:
    """Each variable the compose file reads, with the operators it is read with (`:?` required, `:-` default)."""
    found: dict[str, set[str]] = {}
    for match in VARIABLE.finditer(COMPOSE_TEXT):
        name = match["name"] or match["bare"]
        if name:
            found.setdefault(name, set()).add(f"{match['op'] or ''}{match['arg'] or ''}")
    return found


def env_example() -> dict[str, tuple[str, bool]]:
    """name -> (value, commented out) for every `NAME=value` line of .env.example, commented or not."""
    entries = {}
    for line in ENV_EXAMPLE.splitlines():
        match = re.fullmatch(r"(?P<comment>#\s*)?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)", line.strip())
        if match:
            entries[match["name"]] = (match["value"], bool(match["comment"]))
    return entries


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """What Compose makes of a value, given the variables of .env."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name, op, arg = match["name"] or match["bare"], match["op"] or "", match["arg"] or ""
        current = env.get(name)
        if op in (":?", "?") and (current is None or (op == ":?" and current == "")):
            raise AssertionError(f"compose would refuse to start: {name} is required ({arg})")
        if op == ":-" and not current or op == "-" and current is None:
            return arg
        return current or ""

    return VARIABLE.sub(substitute, value)


def fresh_env() -> dict[str, str]:
    """The variables of a fresh `cp .env.example .env` with the required secrets filled in."""
    env = {name: value for name, (value, commented) in env_example().items() if not commented}
    return {name: value or f"filled-in-{name.lower()}" for name, value in env.items()}


def dockerfile_env() -> dict[str, str]:
    env = {}
    for line in DOCKERFILE.replace("\\\n", " ").splitlines():
        if line.startswith("ENV "):
            for assignment in shlex.split(line[4:]):
                name, _, value = assignment.partition("=")
                env[name] = value
    return env


def parse(service: str, args: list[str]) -> Any:
    try:
        return build_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"{service}: `loradeck {' '.join(args)}` is refused by app/cli.py's parser (see above)")


def test_every_command_is_a_real_entry_point() -> None:
    for name, service in PROJECT.items():
        command = service["command"]
        if command[0] == "celery":  # a raw worker: its app must import and its queues exist
            import importlib

            importlib.import_module(command[command.index("-A") + 1])
            queues = command[command.index("-Q") + 1].split(",")
            assert set(queues) <= {queue.value for queue in Queue}, name
            continue
        assert command[0] == "loradeck", f"{name}: run the project's own entry point"
        assert command[1] not in WORKER_COMMANDS, f"{name}: {command[1]} is a one-off command, not a service"
        args = parse(name, command[1:])
        assert args.command in {"web", "worker", "migrate"}, f"{name}: `loradeck {args.command}` is not one part"


def test_every_queue_is_served_by_a_worker() -> None:
    served = {queue for service in WORKERS.values() for queue in parse("", service["command"][1:]).queues.split(",")}
    missing = {queue.value for queue in Queue} - served
    assert not missing, f"no worker in docker-compose.yml serves {missing}: tasks sent there would wait forever"


def test_each_training_worker_reserves_one_gpu_of_its_own() -> None:
    trainers = {name: s for name, s in WORKERS.items() if "train" in parse(name, s["command"][1:]).queues.split(",")}
    assert len(trainers) >= 2, "show two GPU workers, so adding a third is a copy"
    reserved = []
    for name, service in trainers.items():
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        assert len(devices) == 1, f"{name} trains: it must reserve its GPU"
        device = devices[0]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], name
        assert "count" not in device and len(device["device_ids"]) == 1, f"{name}: one GPU per worker, by id"
        gpu = device["device_ids"][0]
        reserved.append(gpu)
        # The container sees only the reserved GPU, as device 0; CUDA_VISIBLE_DEVICES="1" there would hide it.
        assert service["environment"]["CUDA_VISIBLE_DEVICES"] == "0", name
        assert name == f"worker-gpu{gpu}", f"{name} reserves GPU {gpu}: name it after the GPU it has"
        assert parse(name, service["command"][1:]).name == name, f"{name}: its --name shows on the workers page"
        grace = re.fullmatch(r"(\d+)([sm])", str(service.get("stop_grace_period", "10s")))
        assert grace and int(grace[1]) * (60 if grace[2] == "m" else 1) >= 60, (
            f"{name}: give a stopped run time to checkpoint before Docker kills it"
        )
    assert len(reserved) == len(set(reserved)), f"two workers share a GPU: {sorted(reserved)}"


def test_every_variable_is_documented_in_env_example() -> None:
    documented = env_example()
    for name, uses in referenced_variables().items():
        assert name in documented, f"{name} is read by docker-compose.yml but missing from .env.example"
        value, commented = documented[name]
        required = any(use.startswith((":?", "?")) for use in uses)
        if required:  # a copied example must not start with a published password
            assert not commented and value == "", f".env.example: leave {name} empty, compose then asks for it"
        for use in uses:
            if use.startswith(":-"):
                assert commented and value == use[2:], f".env.example: show {name}'s default as `# {name}={use[2:]}`"
    unused = set(documented) - set(referenced_variables())
    assert not unused, f".env.example documents {unused}, which docker-compose.yml never reads"


def test_the_compose_environment_is_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each service's settings, from a fresh .env: valid, the same as loradeck's defaults, and a web that starts."""
    from app.web.security import login_problem

    workdir = re.search(r"^WORKDIR (\S+)", DOCKERFILE, re.M)
    assert workdir
    env_names = {"DATABASE_URL", "REDIS_URL"} | {f"LORADECK_{field.upper()}" for field in Settings.model_fields}
    for name, service in PROJECT.items():
        environment = interpolate(service["environment"], fresh_env())
        unknown = {key for key in environment if key.startswith("LORADECK_")} - env_names
        assert not unknown, f"{name}: {unknown} are no settings of app/config.py (a typo is silently ignored)"
        for key in env_names:
            monkeypatch.delenv(key, raising=False)
        for key, value in environment.items():
            monkeypatch.setenv(key, str(value))
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        assert urlparse(settings.resolved_database_url).hostname == "postgres", name
        assert urlparse(settings.redis_url).password, f"{name}: Redis asks for a password"
        for field, info in Settings.model_fields.items():
            raw = str(service["environment"].get(f"LORADECK_{field.upper()}", ""))
            if not re.fullmatch(r"\$\{\w+:-[^}]*\}", raw):  # only the tunables that .env may leave out
                continue
            default = info.get_default(call_default_factory=True)
            if isinstance(default, str) and default.startswith(str(REPO_ROOT)):  # the image's copy of assets/
                default = default.replace(str(REPO_ROOT), workdir[1])
            assert getattr(settings, field) == default, f"{name}: compose's default {field} is not loradeck's"
        if name == "web":
            args = parse(name, service["command"][1:])
            assert login_problem(settings.model_copy(update={"host": args.host})) is None


def test_long_running_services_have_a_health_check_and_restart() -> None:
    for name in LONG_RUNNING:
        service = SERVICES[name]
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no health check"
        assert service.get("restart") in {"unless-stopped", "always"}, f"{name} is not restarted"
    for name in ONE_SHOT:  # inherited `unless-stopped` would rerun the migration forever
        assert SERVICES[name].get("restart") in {"no", "on-failure"}, name


def test_web_health_check_asks_the_apps_health_route_on_its_port() -> None:
    from app.main import app

    web = SERVICES["web"]
    port = parse("web", web["command"][1:]).port
    urls = re.findall(r"https?://[^'\" ]+", " ".join(web["healthcheck"]["test"]))
    assert len(urls) == 1, "the web check asks the app over HTTP"
    url = urlparse(urls[0])
    assert url.path in {getattr(route, "path", None) for route in app.routes}, f"the app has no route {url.path}"
    assert url.port == port, "the check asks another port than the app listens on"
    assert all(published.endswith(f":{port}") for published in web["ports"]), "the published port is not the app's"


def test_worker_health_checks_ask_for_their_own_heartbeat() -> None:
    for name, service in WORKERS.items():
        test = service["healthcheck"]["test"]
        assert test[:2] == ["CMD", "loradeck"], f"{name}: use `loradeck worker --check`"
        args = parse(name, test[2:])
        assert args.command == "worker" and args.check, f"{name}: `celery inspect ping` fails while a worker trains"
        assert args.name in (None, parse(name, service["command"][1:]).name), f"{name} checks another worker"


def test_migrations_run_once_before_web_and_workers() -> None:
    migrate = SERVICES["migrate"]
    assert parse("migrate", migrate["command"][1:]).command == "migrate"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in set(PROJECT) - ONE_SHOT:
        condition = PROJECT[name].get("depends_on", {}).get("migrate", {}).get("condition")
        assert condition == "service_completed_successfully", f"{name} may start on an old schema"


def test_web_and_workers_share_the_data_volume_and_workers_the_model_cache() -> None:
    mounts = {}
    for name in set(PROJECT) - ONE_SHOT:
        service = PROJECT[name]
        volumes = {volume.split(":")[1]: volume.split(":")[0] for volume in service["volumes"]}  # path -> volume
        data_dir = service["environment"]["LORADECK_DATA_DIR"]
        assert data_dir in volumes, f"{name} keeps {data_dir} in the container: lost on restart, unseen by the web"
        assert volumes[data_dir] in COMPOSE["volumes"], f"{name}: the data dir must be a named volume"
        mounts[name] = volumes[data_dir]
        if name in WORKERS:
            hf_home = dockerfile_env()["HF_HOME"]
            assert volumes.get(hf_home) in COMPOSE["volumes"], f"{name} downloads every base model again on restart"
    assert len(set(mounts.values())) == 1, f"web and workers must share one data volume: {mounts}"
    assert dockerfile_env()["LORADECK_DATA_DIR"] == SERVICES["web"]["environment"]["LORADECK_DATA_DIR"]


def test_the_dockerfile_installs_with_the_pins_and_ships_what_the_app_reads() -> None:
    lines = DOCKERFILE.replace("\\\n", " ").splitlines()
    installs = [line for line in lines if "pip install" in line and not line.startswith("#")]
    assert installs and all("-c constraints.txt" in line for line in installs), "install with constraints.txt"
    # A normal install: templates, static files and migrations come with the package, the sources go.
    assert re.search(r"pip install -c constraints.txt --no-deps \. && rm -rf app worker", DOCKERFILE)
    assert "-e ." not in DOCKERFILE, "install the project as a package, not editable"
    copied = " ".join(re.findall(r"^COPY (.+)$", DOCKERFILE, re.M))
    for needed in ("app", "worker", "assets", "README.md"):
        assert re.search(rf"(^|\s){re.escape(needed)}(\s|$)", copied), f"the image lacks {needed}"
    assert re.search(r"^USER (?!root)\S+", DOCKERFILE, re.M), "run as a user, not root"
    assert dockerfile_env()["LORADECK_ASSETS_DIR"] == "/srv/loradeck/assets", "the bundled model and data"
    # The dependencies are the package's own and those of the EXTRAS the image is built with.
    assert re.search(r"^ARG EXTRAS=web$", DOCKERFILE, re.M) and "optional-dependencies" in DOCKERFILE


def test_compose_builds_the_web_without_ml_libraries_and_the_workers_with_them() -> None:
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    web = [*project["dependencies"], *project["optional-dependencies"]["web"]]
    assert not {"torch", "transformers", "peft", "bitsandbytes", "accelerate"} & set(web)
    assert "torch" in project["optional-dependencies"]["worker"]
    for name, service in PROJECT.items():
        extras = service["build"]["args"]["EXTRAS"].split(",")
        assert extras == (["web", "worker", "gguf"] if name in WORKERS else ["web"]), f"{name} is built with {extras}"
        assert ("worker" in service["image"]) == (name in WORKERS), f"{name} runs {service['image']}"


def test_worker_check_finds_the_heartbeat_of_its_own_worker(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`loradeck worker --check`, the workers' health check, against the heartbeat a real worker writes."""
    from worker.runtime.registry import Heartbeat

    own_db = redis_url.rsplit("/", 1)[0] + "/5"  # not the database the session's worker stacks announce in
    monkeypatch.setenv("REDIS_URL", own_db)
    get_settings.cache_clear()
    redis.Redis.from_url(own_db).flushdb()
    from celery.utils.nodenames import host_format

    host = socket.gethostname()
    node = worker_command("train", "worker-gpu0", exact_name=True)
    assert host_format(node[node.index("--hostname") + 1]) == f"worker-gpu0@{host}", "the node name the check expects"
    assert check_worker("worker-gpu0") == 1, "no worker has started"
    heartbeat = Heartbeat(f"worker-gpu0@{host}", ["train"])  # celery's `--hostname worker-gpu0@%h`
    elsewhere = Heartbeat(f"worker-gpu1@{host}-other", ["train"])
    elsewhere.record.host = f"{host}-other"
    try:
        heartbeat.beat()
        assert check_worker("worker-gpu0") == 0
        assert check_worker(None) == 0
        assert check_worker("worker-gpu1") == 1, "another worker's heartbeat must not count"
        heartbeat.stop()
        elsewhere.beat()
        assert check_worker(None) == 1, "a worker on another host must not count"
    finally:
        heartbeat.stop()
        elsewhere.stop()
        get_settings.cache_clear()
