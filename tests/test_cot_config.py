"""`[cot]` in the config: what `relay check-config` says of a listener address or certificate files that cannot
work, naming the key; and what it warns of."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from relay.domain.config import ConfigError, load_settings
from relay.operations.config_warnings import config_warnings


def load(tmp_path: Path, cot: str, tracks: str = "[tracks]\nenabled = true\n") -> object:
    path = tmp_path / "relay.toml"
    path.write_text(f"{tracks}[cot]\n{cot}")
    return load_settings(path)


def problems(tmp_path: Path, cot: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, cot)
    return caught.value.problems


def test_off_by_default_on_loopback_tcp() -> None:
    s = load_settings(None)
    assert not s.cot.enabled and s.cot.url == "tcp://127.0.0.1:8087"


@pytest.mark.parametrize(("cot", "said"), [
    ('url = "http://tak.example:8087"\n', "cot.url: 'http://tak.example:8087': the scheme must be tcp://, tls://"),
    ('url = "tcp://tak.example"\n', "cot.url: 'tcp://tak.example': no port"),
    ('url = "udp://127.0.0.1:70000"\n', "cot.url: 'udp://127.0.0.1:70000': Port out of range"),
    ('enabled = true\nurl = "tls://tak.example:8089"\n', "cot: a tls:// url needs cert_file and key_file"),
    ('url = "tcp://tak.example:8087"\ncert_file = "a.pem"\n', "cot: cert_file: only for a tls:// url"),
    ('callsign_prefix = "БПЛА\\u202e"\n', "cot.callsign_prefix: contains control characters"),
    ("stale_margin_s = 1\n", "cot.stale_margin_s: Input should be greater than or equal to 10"),
])
def test_a_listener_that_cannot_work_is_named_by_its_key(tmp_path: Path, cot: str, said: str) -> None:
    assert any(p.startswith(said) for p in problems(tmp_path, cot)), problems(tmp_path, cot)


def test_certificate_files_that_do_not_exist_are_named(tmp_path: Path) -> None:
    (tmp_path / "client.pem").write_text("x")
    found = problems(tmp_path, f'enabled = true\nurl = "tls://127.0.0.1:8089"\ncert_file = "{tmp_path}/client.pem"\n'
                               f'key_file = "{tmp_path}/nope.key"\n')
    assert found == [f"cot: key_file: no such file {tmp_path}/nope.key"]


def test_check_config_exits_2_and_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('[cot]\nenabled = true\nurl = "tls://127.0.0.1"\n')
    result = subprocess.run([sys.executable, "-m", "relay", "check-config", "--config", str(path)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "cot.url: 'tls://127.0.0.1': no port" in result.stderr


def test_warned_of_plain_tcp_off_the_machine_and_of_markers_without_tracks(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('[cot]\nenabled = true\nurl = "tcp://tak.example:8087"\n')
    s = load_settings(path)
    warnings = config_warnings(s)
    assert any(w.startswith("cot.url: tcp:// to tak.example: the drones' positions cross") for w in warnings)
    assert any(w.startswith("cot.enabled with tracks.enabled false") for w in warnings)
