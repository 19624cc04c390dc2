"""The device registry: named devices in a TOML file in the user's config dir.

    ~/.config/cllm/devices.toml   (or $XDG_CONFIG_HOME/cllm/, or $CLLM_CONFIG_DIR/)

    [devices.orin]
    target = "jetson-orin-nano-8gb"
    transport = "tvm-rpc"            # tvm-rpc | ssh | local
    address = "rpc://192.168.1.20:9090"
    timeout_s = 120                  # one remote step (upload, a timed run)
    power_mode = "15W"               # what nvpmodel was set to, for the report

    [devices.laptop]
    target = "gguf-cpu"
    transport = "ssh"                # runs `cllm-validate DIR --device local` there
    address = "me@laptop.local"
    connect_timeout_s = 10

`cllm-validate ART --device NAME` looks NAME up here; `local`, `rpc://HOST:PORT` and
`ssh://USER@HOST` work without an entry.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import TargetError

TRANSPORTS = ("local", "tvm-rpc", "ssh")


def config_dir() -> Path:
    if os.environ.get("CLLM_CONFIG_DIR"):
        return Path(os.environ["CLLM_CONFIG_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cllm"


def registry_path() -> Path:
    return config_dir() / "devices.toml"


@dataclass(frozen=True)
class Device:
    name: str
    transport: str = "local"
    address: str = ""
    target: str | None = None
    timeout_s: float = 120.0
    connect_timeout_s: float = 10.0
    power_mode: str | None = None
    remote_command: str = "cllm-validate"
    remote_dir: str = "/tmp/cllm-validate"

    def rpc(self) -> dict[str, Any]:
        """{host, port, url} for tvm_rpc.RemoteSession."""
        from urllib.parse import urlparse
        u = urlparse(self.address)
        if u.scheme != "rpc" or not u.hostname or not u.port:
            raise TargetError(f"device '{self.name}': bad device address '{self.address}'",
                              hint="use address = \"rpc://HOST:PORT\" (a TVM RPC server)")
        return {"host": u.hostname, "port": u.port, "url": self.address, "name": self.name}

    def public(self) -> dict[str, Any]:
        return asdict(self)


def _device(name: str, entry: dict[str, Any], where: str) -> Device:
    known = set(Device.__dataclass_fields__) - {"name"}
    if "url" in entry and "address" not in entry:  # the earlier registry key
        entry["address"] = entry.pop("url")
        entry.setdefault("transport", "tvm-rpc")
    bad = sorted(set(entry) - known)
    if bad:
        raise TargetError(f"{where}: device '{name}' has unknown key(s) {', '.join(bad)}",
                          hint=f"known keys: {', '.join(sorted(known))}")
    dev = Device(name=name, **entry)
    if dev.transport not in TRANSPORTS:
        raise TargetError(f"{where}: device '{name}' has transport '{dev.transport}'",
                          hint=f"use one of {', '.join(TRANSPORTS)}")
    if dev.transport != "local" and not dev.address:
        raise TargetError(f"{where}: device '{name}' ({dev.transport}) has no address",
                          hint="rpc://HOST:PORT for tvm-rpc, USER@HOST for ssh")
    if dev.timeout_s <= 0 or dev.connect_timeout_s <= 0:
        raise TargetError(f"{where}: device '{name}' has a non-positive timeout", hint="timeouts are seconds > 0")
    return dev


def load_registry(path: Path | None = None) -> dict[str, Device]:
    path = path or registry_path()
    if not path.is_file():
        return {}
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise TargetError(f"{path} is not valid TOML ({e})", hint="see `cllm-validate --help` for the format") from None
    devices = doc.get("devices", {})
    if not isinstance(devices, dict) or not all(isinstance(v, dict) for v in devices.values()):
        raise TargetError(f"{path}: [devices.NAME] tables expected", hint="see `cllm-validate --help`")
    return {name: _device(name, dict(e), str(path)) for name, e in devices.items()}


def resolve(spec: str, registry: Path | None = None) -> Device:
    """A registry name, or an ad-hoc 'local', 'rpc://HOST:PORT' or 'ssh://[USER@]HOST'."""
    if spec == "local":
        return Device("local")
    if spec.startswith("rpc://"):
        dev = Device(spec, "tvm-rpc", spec)
        dev.rpc()  # validates the address now
        return dev
    if spec.startswith("ssh://"):
        return Device(spec, "ssh", spec[len("ssh://"):])
    devices = load_registry(registry)
    if spec not in devices:
        where = registry or registry_path()
        raise TargetError(f"device '{spec}' is not in {where}",
                          hint=f"known: {', '.join(devices) or 'none'}; or give local, rpc://HOST:PORT, ssh://USER@HOST")
    return devices[spec]
