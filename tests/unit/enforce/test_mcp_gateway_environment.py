"""What the gateway hands the server it starts: an environment of only the registered variables
and secrets, PATH, HOME and the locale; a working directory of its first root, else HOME."""

from __future__ import annotations

from pathlib import Path

from nhidel.enforce.mcp_gateway import server_cwd, server_environment
from nhidel.registrations import McpServer

PARENT = {
    "PATH": "/usr/bin", "HOME": "/home/me", "LANG": "C.UTF-8", "LC_ALL": "C",
    "DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/1000/bus", "NHIDEL_PASSPHRASE": "hunter2",
    "NHIDEL_PASSPHRASE_FILE": "/p", "NHIDEL_HOME": "/h", "NHIDEL_TOKEN": "eyJ...",
    "AWS_SECRET_ACCESS_KEY": "not-registered", "SSH_AUTH_SOCK": "/tmp/agent",
}  # fmt: skip


def test_only_the_registration_path_home_and_locale_reach_the_server() -> None:
    server = McpServer("gh", ("/usr/bin/gh-mcp",), secrets={"GITHUB_TOKEN": "github"},
                       env={"MODE": "ro", "PATH": "/opt/bin"})  # fmt: skip
    env = server_environment(server, {"github": "ghp_value_123"}, PARENT)
    assert env == {
        "PATH": "/opt/bin",  # the registration's own wins
        "HOME": "/home/me",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "MODE": "ro",
        "GITHUB_TOKEN": "ghp_value_123",
    }


def test_the_server_starts_in_its_first_root_else_home(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with_root = McpServer("fs", ("/bin/true",), roots=(str(root), "/elsewhere"))
    assert server_cwd(with_root, {"HOME": str(tmp_path)}) == str(root)
    assert server_cwd(McpServer("fs", ("/bin/true",)), {"HOME": str(tmp_path)}) == str(tmp_path)
    assert server_cwd(McpServer("fs", ("/bin/true",)), {}) == "/"
