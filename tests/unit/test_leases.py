"""Lease files and the pending-reservation journal: atomic claims, the old Ruby layout,
validation before any path is built, and abandoned entries found only when their owner died."""

import ipaddress
import multiprocessing
import os
import subprocess
import sys
import textwrap

import pytest

from packet_provider.core.errors import InputError
from packet_provider.ipam.leases import LeaseStore, PendingJournal, UnassignJournal

RID = "99d5d741-3756-4ebe-a014-34ea7a2e2be1"
MARKER = "0b6f7a1e-8d0c-4c43-9a53-2f3e4b5c6d7e"


def test_lease_path_is_the_old_ruby_layout(tmp_path):
    store = LeaseStore(str(tmp_path))
    assert store.path(RID.upper(), "147.75.84.90") == str(tmp_path / "packet" / RID /
                                                          "147.75.84.90")


def test_claim_is_exclusive_and_release_frees(tmp_path):
    store = LeaseStore(str(tmp_path))
    assert store.claim(RID, "147.75.84.90", "get_address req=1")
    assert not store.claim(RID, "147.75.84.90")
    assert store.is_leased(RID, ipaddress.IPv4Address("147.75.84.90"))
    assert store.leased(RID) == {ipaddress.IPv4Address("147.75.84.90")}
    assert store.release(RID, "147.75.84.90")
    assert not store.release(RID, "147.75.84.90")
    assert store.claim(RID, "147.75.84.90")


def test_files_written_by_the_old_driver_count_as_leases(tmp_path):
    old = tmp_path / "packet" / RID
    old.mkdir(parents=True)
    (old / "147.75.84.91").write_text("")  # the Ruby driver's empty state file
    (old / "README").write_text("not an address")
    store = LeaseStore(str(tmp_path))
    assert store.leased(RID) == {ipaddress.IPv4Address("147.75.84.91")}
    assert not store.claim(RID, "147.75.84.91")
    assert store.remove_range(RID) == 1
    assert (old / "README").exists()  # not ours to delete; the directory stays


@pytest.mark.parametrize("deploy_id", ["../../etc", "", "99d5d741", RID + "/..", "/etc"])
def test_bad_deploy_id_never_becomes_a_path(tmp_path, deploy_id):
    store = LeaseStore(str(tmp_path))
    with pytest.raises(InputError):
        store.claim(deploy_id, "147.75.84.90")
    assert not (tmp_path / "packet").exists()


@pytest.mark.parametrize("ip", ["../passwd", "147.75.84.90/32", "::1", "1.2.3", ""])
def test_bad_ip_never_becomes_a_path(tmp_path, ip):
    with pytest.raises(InputError):
        LeaseStore(str(tmp_path)).claim(RID, ip)
    assert not (tmp_path / "packet").exists()


def _claim_all(args):
    state_dir, ips = args
    store = LeaseStore(state_dir)
    won = []
    for ip in ips:
        claim = store.claim(RID, ip)
        if claim is not None:
            claim.commit()
            won.append(ip)
    return won


def _die_holding_a_claim(state_dir: str, ip: str, commit: bool) -> None:
    """A child process claims ``ip`` and exits (as if killed) with the claim pending or not."""
    code = textwrap.dedent(f"""
        import os
        from packet_provider.ipam.leases import LeaseStore
        claim = LeaseStore({state_dir!r}).claim({RID!r}, {ip!r}, "get_address req=1")
        assert claim is not None
        if {commit!r}:
            claim.commit()
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", code], check=True,
                   env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))


def test_a_pending_claim_of_a_live_process_is_taken(tmp_path):
    store = LeaseStore(str(tmp_path))
    claim = store.claim(RID, "147.75.84.90")
    path = tmp_path / "packet" / RID / "147.75.84.90"
    assert path.read_bytes().startswith(b"pending pid=")
    assert store.is_leased(RID, "147.75.84.90")
    assert store.claim(RID, "147.75.84.90") is None
    claim.commit()
    assert path.read_bytes().startswith(b"claimed pid=")
    assert store.is_leased(RID, "147.75.84.90")
    assert store.claim(RID, "147.75.84.90") is None
    assert [p.name for p in path.parent.iterdir()] == ["147.75.84.90"]  # no temporaries


def test_an_abandoned_claim_is_removed(tmp_path):
    store = LeaseStore(str(tmp_path))
    claim = store.claim(RID, "147.75.84.90")
    claim.abandon()
    assert not store.is_leased(RID, "147.75.84.90")
    assert store.leased(RID) == set()


def test_a_pending_claim_of_a_dead_process_is_free_again(tmp_path):
    _die_holding_a_claim(str(tmp_path), "147.75.84.90", commit=False)
    store = LeaseStore(str(tmp_path))
    assert store.leased(RID) == {ipaddress.IPv4Address("147.75.84.90")}  # the file is there
    assert not store.is_leased(RID, "147.75.84.90")  # but it does not hold the address
    claim = store.claim(RID, "147.75.84.90", "get_address req=2")
    assert claim is not None
    claim.commit()
    text = (tmp_path / "packet" / RID / "147.75.84.90").read_text()
    assert text.startswith("claimed ") and "req=2" in text


def test_a_committed_claim_of_a_dead_process_stays_leased(tmp_path):
    _die_holding_a_claim(str(tmp_path), "147.75.84.90", commit=True)
    store = LeaseStore(str(tmp_path))
    assert store.is_leased(RID, "147.75.84.90")
    assert store.claim(RID, "147.75.84.90") is None


def test_concurrent_takeovers_of_an_abandoned_claim_give_it_once(tmp_path):
    ips = [f"147.75.84.{i}" for i in range(88, 96)]
    for ip in ips:
        _die_holding_a_claim(str(tmp_path), ip, commit=False)
    with multiprocessing.Pool(8) as pool:
        results = pool.map(_claim_all, [(str(tmp_path), ips)] * 8)
    won = [ip for r in results for ip in r]
    assert sorted(won) == sorted(ips)


def test_concurrent_claims_never_share_an_address(tmp_path):
    ips = [f"147.75.84.{i}" for i in range(88, 96)]
    with multiprocessing.Pool(8) as pool:
        results = pool.map(_claim_all, [(str(tmp_path), ips)] * 8)
    won = [ip for r in results for ip in r]
    assert sorted(won) == sorted(ips)  # every address claimed exactly once


def test_remove_range_removes_leases_and_directory(tmp_path):
    store = LeaseStore(str(tmp_path))
    for ip in ("147.75.84.88", "147.75.84.89"):
        store.claim(RID, ip).commit()
    (tmp_path / "packet" / RID / ".claim.147.75.84.90.1.00").write_text("")  # a killed claim's
    assert store.remove_range(RID) == 2
    assert not (tmp_path / "packet" / RID).exists()
    assert store.remove_range(RID) == 0


def test_journal_entry_of_a_live_process_is_not_abandoned(tmp_path):
    journal = PendingJournal(str(tmp_path))
    entry = journal.begin(MARKER, {"project": "p", "token": None})
    assert journal.names() == [f"{MARKER}.json"]
    assert os.stat(entry.path).st_mode & 0o777 == 0o600  # it may hold an AR's token
    assert list(journal.abandoned()) == []  # we hold its lock
    journal.finish(entry)
    assert journal.names() == []
    assert os.stat(journal.dir).st_mode & 0o777 == 0o700


def test_journal_entry_of_a_dead_process_is_abandoned(tmp_path):
    code = textwrap.dedent(f"""
        import os, sys
        from packet_provider.ipam.leases import PendingJournal
        PendingJournal({str(tmp_path)!r}).begin({MARKER!r}, {{"project": "x", "token": "t0k3n"}})
        os._exit(0)  # dies holding the entry
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    journal = PendingJournal(str(tmp_path))
    found = list(journal.abandoned())
    assert [e.marker for e in found] == [MARKER]
    entry = found[0]
    assert entry.token == "t0k3n" and entry.project == "x" and entry.last_checked is None
    assert list(journal.abandoned()) == []  # locked by us now
    entry.close()
    again = list(journal.abandoned())
    assert len(again) == 1
    journal.finish(again[0])
    assert journal.names() == []
    mode = os.stat(os.path.join(journal.dir)).st_mode & 0o777
    assert mode == 0o700


def test_unreadable_journal_entry_is_dropped(tmp_path):
    journal = PendingJournal(str(tmp_path))
    os.makedirs(journal.dir)
    with open(os.path.join(journal.dir, f"{MARKER}.json"), "w") as handle:
        handle.write("{not json")
    assert list(journal.abandoned()) == []
    assert journal.names() == []


def test_temporary_entry_of_a_dead_process_is_removed(tmp_path):
    journal = PendingJournal(str(tmp_path))
    os.makedirs(journal.dir)
    stale = os.path.join(journal.dir, f".{MARKER}.tmp")
    open(stale, "w").close()
    assert journal.busy() and journal.names() == []
    assert list(journal.abandoned()) == []
    assert not os.path.exists(stale) and not journal.busy()


def test_abandoning_a_claim_spares_a_newer_claim_of_the_address(tmp_path):
    store = LeaseStore(str(tmp_path))
    first = store.claim(RID, "147.75.84.90")
    assert store.release(RID, "147.75.84.90")  # e.g. a free_address meanwhile
    second = store.claim(RID, "147.75.84.90", "req=2")
    first.abandon()
    assert store.is_leased(RID, "147.75.84.90")
    second.commit()
    assert "req=2" in (tmp_path / "packet" / RID / "147.75.84.90").read_text()


@pytest.fixture
def lock_modes(monkeypatch):
    """Every flock taken, with whether its descriptor was open for writing (NFS emulates flock
    with fcntl locks, and an exclusive fcntl lock needs a writable descriptor)."""
    import fcntl

    seen = []
    real = fcntl.flock

    def flock(fd, operation):
        mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
        seen.append((operation, mode in (os.O_WRONLY, os.O_RDWR)))
        return real(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    return seen


def test_every_lock_is_taken_on_a_writable_descriptor(tmp_path, lock_modes):
    store = LeaseStore(str(tmp_path))
    held = store.claim(RID, "147.75.84.88")  # locked by its claimer
    assert store.is_leased(RID, "147.75.84.88")  # looked at while held
    held.commit()
    assert store.is_leased(RID, "147.75.84.88")  # looked at once final
    _die_holding_a_claim(str(tmp_path), "147.75.84.89", commit=False)
    assert not store.is_leased(RID, "147.75.84.89")
    store.claim(RID, "147.75.84.89").commit()  # takes the dead claim over
    (tmp_path / "packet" / RID / ".claim.147.75.84.90.1.00").write_text("")  # a killed claim's
    store.remove_range(RID)
    journal = PendingJournal(str(tmp_path))
    journal.finish(journal.begin(MARKER, {"project": "p"}))
    code = textwrap.dedent(f"""
        import os
        from packet_provider.ipam.leases import PendingJournal
        PendingJournal({str(tmp_path)!r}).begin({MARKER!r}, {{"project": "x"}})
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", code], check=True,
                   env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    open(os.path.join(journal.dir, f".{MARKER}.tmp"), "w").close()  # a killed begin's
    for entry in journal.abandoned():
        journal.finish(entry)
    assert len(lock_modes) >= 10
    read_only = [op for op, writable in lock_modes if not writable]
    assert read_only == [], f"{len(read_only)} of {len(lock_modes)} locks on read-only files"


def test_an_owed_unassignment_is_durable_and_holds_no_token(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    journal = UnassignJournal(str(tmp_path))
    assert not journal.busy() and journal.reservations() == []
    path = journal.record(RID.upper(), "147.75.84.90", {"project": MARKER, "ar_ip": "147.75.84.88",
                                                         "ar_size": 8, "req": 7})
    assert path == str(tmp_path / "packet" / ".unassign" / RID / "147.75.84.90")
    assert len(synced) >= 4  # the file, then each directory up to packet/
    assert journal.busy() and journal.reservations() == [RID]
    assert journal.pending(RID) == {ipaddress.IPv4Address("147.75.84.90")}
    [entry] = list(journal.take(RID))
    assert (entry.project, entry.ar_ip, entry.ar_size) == (MARKER, "147.75.84.88", 8)
    assert list(journal.take(RID)) == []  # locked by us: nobody else completes it
    journal.done(entry)
    assert not journal.busy() and journal.pending(RID) == set()
    assert sorted(os.listdir(tmp_path / "packet")) == [".unassign"]


def test_an_owed_unassignment_recorded_anew_is_not_dropped_by_the_older_one(tmp_path):
    journal = UnassignJournal(str(tmp_path))
    journal.record(RID, "147.75.84.90", {})
    [old] = list(journal.take(RID))
    journal.record(RID, "147.75.84.90", {"req": 2})  # a later free of it (replaces the file)
    journal.done(old)
    [new] = list(journal.take(RID))
    assert new.data["req"] == 2
    new.close()


def test_owed_unassignments_of_a_range_are_dropped_with_it(tmp_path):
    journal = UnassignJournal(str(tmp_path))
    for ip in ("147.75.84.90", "147.75.84.91"):
        journal.record(RID, ip, {})
    assert journal.discard(RID, "147.75.84.90") and not journal.discard(RID, "147.75.84.90")
    (tmp_path / "packet" / ".unassign" / RID / ".147.75.84.92.1.00.tmp").write_text("")
    assert journal.remove_range(RID) == 1
    assert not (tmp_path / "packet" / ".unassign" / RID).exists()


def test_an_unreadable_owed_unassignment_still_names_its_address(tmp_path):
    journal = UnassignJournal(str(tmp_path))
    journal.record(RID, "147.75.84.90", {})
    (tmp_path / "packet" / ".unassign" / RID / "147.75.84.90").write_text("{half")
    [entry] = list(journal.take(RID))
    assert entry.ip == ipaddress.IPv4Address("147.75.84.90") and entry.ar_ip is None
    entry.close()


@pytest.mark.parametrize("deploy_id, ip", [("../x", "147.75.84.90"), (RID, "../../x")])
def test_owed_unassignment_paths_are_validated(tmp_path, deploy_id, ip):
    with pytest.raises(InputError):
        UnassignJournal(str(tmp_path)).record(deploy_id, ip, {})
    assert not (tmp_path / "packet").exists()


def test_owed_unassignments_are_locked_on_writable_descriptors(tmp_path, lock_modes):
    journal = UnassignJournal(str(tmp_path))
    journal.record(RID, "147.75.84.90", {})
    for entry in journal.take(RID):
        journal.done(entry)
    assert lock_modes and all(writable for _op, writable in lock_modes)
