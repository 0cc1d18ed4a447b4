"""A grant bound to a process's life (nhidel.enforce.bound): the marker that lets the next
command revoke it when the process died, and what planted or stale markers can and cannot do."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest
from helpers.token_world import SCOPE, T, World

from nhidel.actions.grants import GrantRequest, revoke
from nhidel.enforce.bound import Marker, Orphan, bound_grant, revoke_orphans, runs_dir
from nhidel.errors import PolicyError
from nhidel.fsutil import atomic_write
from nhidel.models import new_grant_id
from nhidel.tokens.decision import Reason


def ended_process() -> int:
    """The pid of a process that has ended and been reaped."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def plant(world: World, marker: Marker) -> Path:
    path = runs_dir(world.paths) / marker.grant
    atomic_write(path, marker.to_bytes())
    return path


def test_a_marker_whose_process_ended_gets_its_grant_revoked(world: World) -> None:
    grant, token = world.issue()
    pid = ended_process()
    path = plant(world, dataclasses.replace(Marker.of_this_process(grant.id), pid=pid))
    assert revoke_orphans(world.paths, world.keystore, now=T) == [Orphan(grant.id, pid)]
    assert world.decide(token).reason is Reason.REVOKED
    assert not path.exists()
    assert revoke_orphans(world.paths, world.keystore, now=T) == []


def test_a_running_process_keeps_its_grant(world: World) -> None:
    grant, token = world.issue()
    path = plant(world, Marker.of_this_process(grant.id))
    assert revoke_orphans(world.paths, world.keystore, now=T) == []
    assert world.decide(token).allowed
    assert path.exists()


def test_a_reused_pid_is_told_apart_by_its_start_time(world: World) -> None:
    grant, token = world.issue()
    mine = Marker.of_this_process(grant.id)
    assert mine.start is not None
    plant(world, dataclasses.replace(mine, start=mine.start - 1))  # this pid, another process
    assert revoke_orphans(world.paths, world.keystore, now=T) == [Orphan(grant.id, os.getpid())]
    assert world.decide(token).reason is Reason.REVOKED


def test_a_marker_from_before_a_reboot_is_an_orphan(world: World) -> None:
    grant, token = world.issue()
    plant(world, dataclasses.replace(Marker.of_this_process(grant.id), boot="another-boot"))
    assert [o.grant for o in revoke_orphans(world.paths, world.keystore, now=T)] == [grant.id]


def test_a_process_in_another_pid_namespace_is_not_judged(world: World) -> None:
    # Its pid means nothing here: the grant lives to its TTL rather than dying under it.
    grant, token = world.issue()
    other = dataclasses.replace(Marker.of_this_process(grant.id), pid=ended_process(),
                                pidns="pid:[1]")  # fmt: skip
    path = plant(world, other)
    assert revoke_orphans(world.paths, world.keystore, now=T) == []
    assert world.decide(token).allowed
    assert path.exists()


def test_a_link_at_a_markers_name_is_removed_never_followed(world: World, tmp_path: Path) -> None:
    grant, token = world.issue()
    elsewhere = tmp_path / "elsewhere"
    dead = dataclasses.replace(Marker.of_this_process(grant.id), pid=ended_process())
    elsewhere.write_bytes(dead.to_bytes())
    runs_dir(world.paths).mkdir(mode=0o700)
    link = runs_dir(world.paths) / grant.id
    link.symlink_to(elsewhere)
    assert revoke_orphans(world.paths, world.keystore, now=T) == []
    assert not link.is_symlink()
    assert elsewhere.read_bytes() == dead.to_bytes()
    assert world.decide(token).allowed


@pytest.mark.parametrize(
    "content",
    [b"", b"not json", b'{"grant": "g", "pid": 1}', b"x" * 5000,
     b'{"grant": "GRANT", "pid": -1, "start": null, "boot": null, "pidns": null}'],
    ids=["empty", "garbage", "fields-missing", "too-long", "bad-pid"],
)  # fmt: skip
def test_what_is_not_a_marker_is_removed_and_revokes_nothing(world: World, content: bytes) -> None:
    grant, token = world.issue()
    path = runs_dir(world.paths) / grant.id
    atomic_write(path, content.replace(b"GRANT", grant.id.encode()))
    assert revoke_orphans(world.paths, world.keystore, now=T) == []
    assert not path.exists()
    assert world.decide(token).allowed


def test_a_planted_marker_naming_a_live_grant_only_revokes_it(world: World) -> None:
    # Restrictive: an agent that can write files can end a grant, never extend one.
    grant, token = world.issue()
    other, other_token = world.issue()
    plant(world, dataclasses.replace(Marker.of_this_process(grant.id), pid=ended_process()))
    assert [o.grant for o in revoke_orphans(world.paths, world.keystore, now=T)] == [grant.id]
    assert world.decide(token).reason is Reason.REVOKED
    assert world.decide(other_token).allowed


def test_a_marker_of_a_grant_never_minted_is_only_removed(world: World) -> None:
    # A kill after the marker was written and before the grant was minted.
    marker = dataclasses.replace(Marker.of_this_process(new_grant_id()), pid=ended_process())
    path = plant(world, marker)
    assert revoke_orphans(world.paths, world.keystore, now=T) == []
    assert not path.exists()


def test_a_refused_bound_grant_leaves_no_marker(world: World) -> None:
    request = GrantRequest("reviewer", ["repo:write:acme/api"])
    bound_to = bound_grant(world.paths, world.keystore, request, clock=lambda: T, reason="test")
    with pytest.raises(PolicyError), bound_to:
        pytest.fail("a refused grant never reaches the block")
    assert os.listdir(runs_dir(world.paths)) == []


def test_a_bound_grant_is_revoked_however_its_block_ends(world: World) -> None:
    request = GrantRequest("reviewer", [SCOPE])
    bound_to = bound_grant(world.paths, world.keystore, request, clock=lambda: T, reason="test")
    with pytest.raises(RuntimeError), bound_to as bound:
        marker = runs_dir(world.paths) / bound.grant.id
        assert Marker.from_bytes(marker.read_bytes()) == Marker.of_this_process(bound.grant.id)
        assert world.decide(bound.token).allowed
        raise RuntimeError("the child failed")
    assert world.decide(bound.token).reason is Reason.REVOKED
    assert not marker.exists()


def test_a_marker_left_after_its_grant_was_revoked_is_removed_unmentioned(world: World) -> None:
    # Killed after the revocation, before the marker was removed: nothing left to revoke.
    grant, _ = world.issue()
    revoke(world.paths, ids=[grant.id], reason="exec ended", now=T, keystore=world.keystore)
    path = plant(world, dataclasses.replace(Marker.of_this_process(grant.id), pid=ended_process()))
    assert revoke_orphans(world.paths, world.keystore, now=T) == []
    assert not path.exists()
