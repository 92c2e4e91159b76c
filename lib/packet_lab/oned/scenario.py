"""A scenario driver playing oned's part over an :class:`~.oned.OnedEmulator`.

It changes VMs the way oned 5.12 does, running the real executables the way oned runs them:
IPAM actions through one_ipam (:func:`.one_ipam.run_ipam`), VNM actions like the VMM driver
(:func:`.drivers.run_vnm`, on a host through its ``host_prefix``), and state hooks like onehem
(:func:`.drivers.run_hook`) on every matching VM state change, with the VM's XML at that
moment. Everything it runs is recorded as an :class:`Event`.

Quick start::

    oned = OnedEmulator().start()
    sc = Scenario(oned, remotes_dir="remotes", env=remote_env)
    hv1 = sc.add_host("hv1", deploy_id=device_1, host_prefix=["ip", "netns", "exec", "hv1"])
    hv2 = sc.add_host("hv2", deploy_id=device_2)
    private = sc.create_vnet("private", vn_mad="dummy",
                             ars=[{"TYPE": "IP4", "IP": "192.168.150.2", "SIZE": "16"}])
    public = sc.create_vnet("public", vn_mad="alias_sdnat")
    ar = sc.add_ar(public, {"TYPE": "IP4", "IP": "10.0.0.1", "SIZE": "1",  # fake start IP
                            "IPAM_MAD": "packet", "PACKET_PROJECT": project,
                            "PACKET_TOKEN": token, "FACILITY": "ams1"})
    sc.add_hook(open("share/examples/alias_ip/running_hook").read())   # or a dict
    vm = sc.create_vm("web", nics=[private], aliases=[{"network_id": public}])
    sc.deploy(vm, hv1)                     # hooks on PROLOG, BOOT, RUNNING...
    alias = sc.attach_alias(vm, public)    # ATTACH=YES during HOTPLUG_NIC
    sc.detach_alias(vm, alias)
    sc.migrate(vm, hv2)                    # live by default
    sc.poweroff(vm); sc.resume(vm); sc.terminate(vm)
    failed = sc.hook_executions(hook_id)[-1]           # ExecutionRecord
    sc.retry_hook(hook_id, failed.execution_id)         # like `onehook retry`

API (all ids are ints; every method raises :class:`ScenarioError` when oned would fail the
operation, after leaving the objects in the state oned would leave them):

- ``Scenario(oned, remotes_dir, hooks_dir=None, env=None, vnm_drivers=None,
  defer_hooks=False, ipam_timeout=90, vnm_timeout=90, hook_timeout=None)``. ``oned`` is an
  OnedEmulator (its ``one.hook.retry`` then runs through this scenario) or a bare
  OnedState. ``hooks_dir`` defaults to ``<remotes_dir>/hooks``. ``vnm_drivers``: VN_MADs
  whose actions are run; default = every driver directory present under
  ``<remotes_dir>/vnm`` (others, e.g. ``dummy``, are skipped like no-op drivers).
  Hooks run like onehem, asynchronously: those of every state change of an operation run,
  in order and with the XML of their event, once the operation has finished (so a hook
  that reads the VM from oned sees the state after the operation, as it nearly always does
  with a real oned). ``defer_hooks=True`` keeps them queued until
  ``flush_hooks(parallel=False)`` (``parallel=True`` runs them all at once, as onehem may);
  ``pending_hooks`` counts them.
- ``.state``, ``.events`` (list of :class:`Event`), ``.events_named(prefix)``,
  ``.clear_events()``, ``.host_prefix`` (dict host id -> argv prefix).
- Hosts: ``add_host(name, deploy_id=None, host_prefix=(), provision=None)``,
  ``set_host_prefix(host_id, prefix)``.
- Networks: ``create_vnet(name, vn_mad="alias_sdnat", bridge="br0", ars=())``,
  ``add_ar(vnet_id, attrs)`` -> ar id (IPAM_MAD=packet: register_address_range; its AR
  template output is merged over the user's; on failure the AR is not added),
  ``rm_ar(vnet_id, ar_id)`` (refused while leases exist; packet: unregister_address_range,
  on failure the AR stays).
- VMs: ``create_vm(name, nics=(...), aliases=(...))``: a NIC is a network id or
  ``{"network_id", "ip"?, "ar_id"?}``; an alias ``{"network_id", "parent"=0 (NIC_ID),
  "ip"?, "ar_id"?, "external"=True}``. Leases of packet ARs come from IPAM (``ip`` given:
  allocate_address, else get_address); others are local. On a failure, leases taken so far
  are freed and no VM is created. The VM is PENDING.
- ``deploy(vm, host)``: PROLOG, BOOT (pre; deploy, which sets DEPLOY_ID ``one-<id>``;
  post <deploy_id>; failed pre/post: cancel, clean, BOOT_FAILURE), RUNNING.
- ``migrate(vm, host, live=True)``: live: MIGRATE; pre on the destination (failure: back to
  RUNNING on the source); clean on the source and post on the destination, failures
  ignored; RUNNING. Cold (live=False): SAVE_MIGRATE, clean on the source, PROLOG_MIGRATE,
  BOOT (pre, post on the destination), RUNNING.
- ``poweroff(vm)``: SHUTDOWN_POWEROFF; clean (failure: back to RUNNING); POWEROFF.
  ``resume(vm)``: BOOT_POWEROFF; pre; post (failure: back to POWEROFF); RUNNING.
- ``attach_alias(vm, network_id, parent=0, ip=None, ar_id=None, external=True)`` -> NIC_ID:
  lease, alias added with ATTACH=YES, HOTPLUG_NIC (ACTIVE/HOTPLUG_NIC_POWEROFF when powered off),
  pre and post <deploy_id> for an EXTERNAL alias of a running VM; on failure the alias and
  its lease are removed; then ATTACH dropped, RUNNING (or POWEROFF).
- ``detach_alias(vm, nic_id)``: ATTACH=YES marked, HOTPLUG_NIC, clean for an EXTERNAL alias
  of a running VM (failure: alias kept); the alias is removed and its lease freed
  (free_address for packet ARs), RUNNING.
- ``terminate(vm)``: SHUTDOWN, clean (failure: back to RUNNING), EPILOG, leases freed
  (free_address), DONE. NICs stay in the DONE VM's XML, as in oned.
- History: every action marks the current record's ACTION (live-migrate 2, poweroff 19,
  resume 11, alias-attach 46, alias-detach 47, terminate 27...); a migration opens a record
  on the new host, a hotplug/poweroff/resume closes the record and opens a copy on the same
  host with ACTION 0. The last record is always the current host.
- Hooks: ``add_hook(template)`` (oned syntax string or dict, same checks as
  one.hook.allocate), or create them with pyone. State hooks on VMs fire on ON=CUSTOM
  (STATE/LCM_STATE names), RUNNING, DONE, POWEROFF, PROLOG, SHUTDOWN, UNKNOWN, STOP,
  CREATE. REMOTE=YES runs behind the VM's host prefix. Each run adds an execution record
  (``hook_executions(hook_id)``); ``retry_hook(hook_id, execution_id)`` runs the same
  command with the same arguments again (also reachable as ``one.hook.retry``).

An :class:`Event` has ``name`` ("ipam get_address", "vnm alias_sdnat/post", "hook
alias_ip_running", "state", "vmm deploy"...), ``argv``, ``rc``, ``stdout``, ``stderr``,
``duration_ms``, ``vm_id``, ``stdin`` and ``detail`` (e.g. the state names, the hook's
execution id).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from packet_lab.oned import drivers, one_ipam
from packet_lab.oned.objects import (
    LCM_STATES,
    VM,
    VM_STATES,
    AddressRange,
    ExecutionRecord,
    Lease,
    OnedError,
    OnedState,
)
from packet_provider.core.onetemplate import TemplateError, parse_template

_STATE_NAMES = {v: k for k, v in VM_STATES.items()}
_LCM_NAMES = {v: k for k, v in LCM_STATES.items()}
S = VM_STATES
L = LCM_STATES



class ScenarioError(Exception):
    """An operation oned would fail; ``event`` is the failed step, if a driver failed."""

    def __init__(self, message: str, event: Optional[Event] = None) -> None:
        super().__init__(message)
        self.event = event


@dataclass
class Event:
    name: str
    argv: List[str] = field(default_factory=list)
    rc: int = 0
    stdout: str = ""
    stderr: str = ""
    duration_ms: float = 0.0
    vm_id: Optional[int] = None
    stdin: str = ""
    detail: Dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def error_message(self) -> str:
        return drivers.error_message(self.stderr)


NicSpec = Union[int, Mapping[str, Any]]


class Scenario:
    """oned's behaviour for the operations the three components react to. See the module
    docstring for the API."""

    def __init__(self, oned: Any, remotes_dir: Union[str, os.PathLike[str]],
                 hooks_dir: Optional[Union[str, os.PathLike[str]]] = None,
                 env: Optional[Mapping[str, str]] = None,
                 vnm_drivers: Optional[Sequence[str]] = None, defer_hooks: bool = False,
                 ipam_timeout: float = 90, vnm_timeout: float = 90,
                 hook_timeout: Optional[float] = None) -> None:
        self.oned = oned if not isinstance(oned, OnedState) else None
        self.state: OnedState = oned if isinstance(oned, OnedState) else oned.state
        self.remotes_dir = Path(remotes_dir)
        self.hooks_dir = Path(hooks_dir) if hooks_dir else self.remotes_dir / "hooks"
        self.env = dict(env) if env is not None else None
        self.vnm_drivers = set(vnm_drivers) if vnm_drivers is not None else None
        self.defer_hooks = defer_hooks
        self.ipam_timeout = ipam_timeout
        self.vnm_timeout = vnm_timeout
        self.hook_timeout = hook_timeout
        self.events: List[Event] = []
        self.host_prefix: Dict[int, List[str]] = {}
        self._pending: List[Tuple[int, int, str]] = []  # (hook id, vm id, vm xml)
        self._depth = 0  # nesting of operations in progress
        self._lock = threading.RLock()
        self._req_id = 0
        if self.oned is not None:
            self.oned.hook_runner = self._retry_from_rpc

    # -- events --

    def _record(self, event: Event) -> Event:
        with self._lock:
            self.events.append(event)
        return event

    def _from_exec(self, result: drivers.ExecResult, vm_id: Optional[int] = None,
                   **detail: Any) -> Event:
        merged = dict(result.extra)
        merged.update(detail)
        if result.timed_out:
            merged["timed_out"] = True
        return self._record(Event(result.name, result.argv, result.rc, result.stdout,
                                  result.stderr, result.duration_ms, vm_id, result.stdin,
                                  merged))

    def events_named(self, prefix: str) -> List[Event]:
        return [e for e in self.events if e.name.startswith(prefix)]

    def clear_events(self) -> None:
        with self._lock:
            self.events.clear()

    # -- hosts --

    def add_host(self, name: str, deploy_id: Optional[str] = None,
                 host_prefix: Sequence[str] = (),
                 provision: Optional[Mapping[str, str]] = None) -> int:
        host_id = self.state.add_host(name, deploy_id, provision)
        self.host_prefix[host_id] = list(host_prefix)
        return host_id

    def set_host_prefix(self, host_id: int, prefix: Sequence[str]) -> None:
        self.state.host(host_id)
        self.host_prefix[host_id] = list(prefix)

    def _prefix(self, host_id: Optional[int]) -> List[str]:
        return list(self.host_prefix.get(host_id, [])) if host_id is not None else []

    # -- IPAM --

    def _ipam(self, action: str, ar_attrs: Mapping[str, str],
              address: Optional[Mapping[str, str]] = None, vm_id: Optional[int] = None
              ) -> Event:
        with self._lock:
            self._req_id += 1
            req_id = self._req_id
        result = one_ipam.run_ipam(self.remotes_dir, action, req_id, ar_attrs, address,
                                  env=self.env, timeout=self.ipam_timeout)
        return self._from_exec(result, vm_id, req_id=req_id)

    @staticmethod
    def _is_packet(ar: AddressRange) -> bool:
        return ar.ipam_mad not in ("", "internal")

    # -- networks --

    def create_vnet(self, name: str, vn_mad: str = "alias_sdnat", bridge: str = "br0",
                    ars: Sequence[Mapping[str, str]] = ()) -> int:
        vnet_id = self.state.add_vnet(name, vn_mad, bridge)
        for ar in ars:
            self.add_ar(vnet_id, ar)
        return vnet_id

    def add_ar(self, vnet_id: int, attrs: Mapping[str, str]) -> int:
        """``onevnet addar``: an AR with an IPAM_MAD is registered by its driver first."""
        with self._lock:
            user = OrderedDict((k.upper(), str(v)) for k, v in attrs.items())
            user.setdefault("TYPE", "IP4")
            self.state.vnet(vnet_id)
            if user.get("IPAM_MAD", "internal") in ("", "internal"):
                return self._oned(self.state.add_ar, vnet_id, user)
            self._oned(_check_user_ar, user)
            event = self._ipam("register_address_range", user)
            if not event.ok:
                raise ScenarioError(
                    f"Error registering address range: {_message(event)}", event)
            merged = OrderedDict(user)
            merged.update(_driver_ar(event.stdout, event))
            return self._oned(self.state.add_ar, vnet_id, merged)

    def rm_ar(self, vnet_id: int, ar_id: int) -> None:
        """``onevnet rmar``: refused while leases exist; an IPAM AR is unregistered first."""
        with self._lock:
            ar = self._oned(self.state.vnet(vnet_id).ar, ar_id)
            if ar.leases:
                raise ScenarioError(f"Address Range {ar_id} has leases in use")
            if self._is_packet(ar):
                event = self._ipam("unregister_address_range", ar.ipam_attrs())
                if not event.ok:
                    raise ScenarioError(
                        f"Error unregistering address range: {_message(event)}", event)
            self._oned(self.state.remove_ar, vnet_id, ar_id)

    # -- leases --

    def _lease(self, vm_id: int, spec: Mapping[str, Any]) -> Tuple[int, int, Lease]:
        vnet_id = int(spec["network_id"])
        ip = spec.get("ip")
        ar = self._oned(self.state.pick_ar, vnet_id, ip, spec.get("ar_id"))
        if not self._is_packet(ar):
            return vnet_id, ar.ar_id, self._oned(self.state.take_lease, vnet_id, ar.ar_id,
                                                 vm_id, ip)
        if ip is not None:
            index = ar.index_of(ip)
            if index is None or index in ar.leases:
                raise ScenarioError(f"Address {ip} not available in AR {ar.ar_id}")
            event = self._ipam("allocate_address", ar.ipam_attrs(),
                               _address(ar, ip), vm_id)
            if not event.ok:
                raise ScenarioError(f"Cannot allocate address {ip}: {_message(event)}",
                                    event)
        else:
            if ar.free_index() is None:
                raise ScenarioError(f"No free address in AR {ar.ar_id}")
            event = self._ipam("get_address", ar.ipam_attrs(), OrderedDict([("SIZE", "1")]),
                               vm_id)
            if not event.ok:
                raise ScenarioError(f"Cannot get an address: {_message(event)}", event)
            ip = _driver_address(event.stdout, event)
        try:
            lease = self.state.take_lease(vnet_id, ar.ar_id, vm_id, ip)
        except OnedError as exc:
            self._free(vnet_id, ar.ar_id, ip, vm_id)
            raise ScenarioError(exc.message) from None
        return vnet_id, ar.ar_id, lease

    def _free(self, vnet_id: int, ar_id: int, ip: str, vm_id: Optional[int]) -> None:
        """Release a lease: free_address for IPAM ARs (a failure is only logged by oned)."""
        vnet = self.state.vnets.get(vnet_id)
        ar = next((a for a in vnet.ars if a.ar_id == ar_id), None) if vnet else None
        if ar is not None and self._is_packet(ar):
            self._ipam("free_address", ar.ipam_attrs(), _address(ar, ip), vm_id)
        self.state.release_lease(vnet_id, ar_id, ip)

    def _free_nic(self, vm_id: int, nic: Mapping[str, str]) -> None:
        if nic.get("IP") and nic.get("NETWORK_ID") and nic.get("AR_ID"):
            self._free(int(nic["NETWORK_ID"]), int(nic["AR_ID"]), nic["IP"], vm_id)

    # -- VMs --

    def create_vm(self, name: str, nics: Sequence[NicSpec] = (),
                  aliases: Sequence[Mapping[str, Any]] = (),
                  template: Optional[Mapping[str, str]] = None) -> int:
        """``onevm create``: leases for every NIC and alias, VM PENDING."""
        with self._operation():
            vm = self.state.add_vm(name, template)
            taken: List[Tuple[int, int, str]] = []
            try:
                for nic_spec in nics:
                    spec = ({"network_id": nic_spec} if isinstance(nic_spec, int)
                            else dict(nic_spec))
                    vnet_id, ar_id, lease = self._lease(vm.id, spec)
                    taken.append((vnet_id, ar_id, lease.ip))
                    self.state.add_nic(vm.id, vnet_id, ar_id, lease)
                for spec in aliases:
                    vnet_id, ar_id, lease = self._lease(vm.id, spec)
                    taken.append((vnet_id, ar_id, lease.ip))
                    self._oned(self.state.add_alias, vm.id, int(spec.get("parent", 0)),
                               vnet_id, ar_id, lease, bool(spec.get("external", True)))
            except (ScenarioError, OnedError, KeyError, ValueError) as exc:
                for vnet_id, ar_id, ip in reversed(taken):
                    self._free(vnet_id, ar_id, ip, vm.id)
                with self.state.lock:
                    del self.state.vms[vm.id]
                    self.state.changed()
                if isinstance(exc, ScenarioError):
                    raise
                raise ScenarioError(getattr(exc, "message", str(exc))) from None
            self._changed(vm, "create")
            return vm.id

    def vm_xml(self, vm_id: int) -> str:
        return self.state.vm_xml(vm_id)

    def _vm(self, vm_id: int, *allowed: Tuple[int, Optional[int]]) -> VM:
        vm = self._oned(self.state.vm, vm_id)
        for state, lcm in allowed:
            if vm.state == state and (lcm is None or vm.lcm_state == lcm):
                return vm
        raise ScenarioError(
            f"Wrong state to perform action: VM {vm_id} is "
            f"{_STATE_NAMES.get(vm.state)}/{_LCM_NAMES.get(vm.lcm_state, vm.lcm_state)}")

    def _set(self, vm: VM, state: str, lcm: str = "LCM_INIT") -> None:
        with self.state.lock:
            vm.set_state(S[state], L[lcm])
            self.state.changed()
        self._changed(vm, "state")

    def _vmm(self, vm: VM, action: str, host_id: Optional[int]) -> None:
        """The hypervisor part of an action (emulated: always succeeds)."""
        self._record(Event(f"vmm {action}", vm_id=vm.id,
                           detail={"host": host_id, "deploy_id": vm.deploy_id}))

    def _vn_mads(self, vm: VM, only: Optional[Mapping[str, str]] = None) -> List[str]:
        nics = [only] if only is not None else vm.all_nics()
        out: List[str] = []
        for nic in nics:
            mad = nic.get("VN_MAD", "")
            if mad and mad not in out:
                out.append(mad)
        return out

    def _runnable(self, vn_mad: str, action: str) -> bool:
        if self.vnm_drivers is not None:
            return vn_mad in self.vnm_drivers
        try:
            return drivers.vnm_path(self.remotes_dir, vn_mad, action).exists()
        except ValueError:
            return False

    def _vnm(self, vm: VM, action: str, host_id: Optional[int], deploy_id: bool = False,
             only: Optional[Mapping[str, str]] = None) -> Optional[Event]:
        """Run ``action`` of every VN_MAD of the VM (or of one NIC); the first failed event,
        or None."""
        for vn_mad in self._vn_mads(vm, only):
            if not self._runnable(vn_mad, action):
                self._record(Event(f"vnm {vn_mad}/{action}", vm_id=vm.id,
                                   detail={"skipped": True, "host": host_id}))
                continue
            result = drivers.run_vnm(self.remotes_dir, vn_mad, action, self.vm_xml(vm.id),
                                     vm.deploy_id if deploy_id else None,
                                     self._prefix(host_id), self.env, self.vnm_timeout)
            event = self._from_exec(result, vm.id, host=host_id)
            if not event.ok:
                return event
        return None

    def deploy(self, vm_id: int, host_id: int) -> None:
        """``onevm deploy``: PROLOG, BOOT (pre, deploy, post), RUNNING."""
        with self._operation():
            vm = self._vm(vm_id, (S["PENDING"], None), (S["HOLD"], None))
            self._oned(self.state.host, host_id)
            self.state.add_history(vm.id, host_id)
            self._set(vm, "ACTIVE", "PROLOG")
            self._set(vm, "ACTIVE", "BOOT")
            self._boot(vm, host_id, failure_state=("ACTIVE", "BOOT_FAILURE"))
            self._set(vm, "ACTIVE", "RUNNING")

    def _boot(self, vm: VM, host_id: int, failure_state: Tuple[str, str],
              on_failure: Optional[Any] = None) -> None:
        failed = self._vnm(vm, "pre", host_id)
        if failed is None:
            self._vmm(vm, "deploy", host_id)
            with self.state.lock:  # the hypervisor's domain name, known once deployed
                vm.deploy_id = vm.deploy_id or f"one-{vm.id}"
                self.state.changed()
            failed = self._vnm(vm, "post", host_id, deploy_id=True)
            if failed is not None:
                self._vmm(vm, "cancel", host_id)
                self._vnm(vm, "clean", host_id)
        if failed is not None:
            if on_failure is not None:
                on_failure()
            self._set(vm, *failure_state)
            raise ScenarioError(f"Error deploying VM {vm.id}: {_message(failed)}", failed)

    def migrate(self, vm_id: int, host_id: int, live: bool = True) -> None:
        """``onevm migrate [--live]`` to ``host_id``."""
        with self._operation():
            vm = self._vm(vm_id, (S["ACTIVE"], L["RUNNING"]))
            self._oned(self.state.host, host_id)
            source = vm.host_id
            if source == host_id:
                raise ScenarioError(f"VM {vm_id} is already running on host {host_id}")
            self.state.set_action(vm.id, "live-migrate" if live else "migrate")
            self.state.close_history(vm.id, copy=False)
            self.state.add_history(vm.id, host_id)
            if live:
                self._live_migrate(vm, source, host_id)
            else:
                self._cold_migrate(vm, source, host_id)

    def _back_to_source(self, vm: VM, source: int) -> None:
        # oned: failed migration, the VM keeps running where it was (cp_previous_history)
        self.state.close_history(vm.id, copy=False)
        self.state.add_history(vm.id, source)

    def _live_migrate(self, vm: VM, source: int, dest: int) -> None:
        self._set(vm, "ACTIVE", "MIGRATE")
        failed = self._vnm(vm, "pre", dest)
        if failed is not None:
            self._back_to_source(vm, source)
            self._set(vm, "ACTIVE", "RUNNING")
            raise ScenarioError(f"Error migrating VM {vm.id}: {_message(failed)}", failed)
        self._vmm(vm, "migrate", dest)
        self._vnm(vm, "clean", source)  # failure ignored
        self._vnm(vm, "post", dest, deploy_id=True)  # failure ignored
        self._set(vm, "ACTIVE", "RUNNING")

    def _cold_migrate(self, vm: VM, source: int, dest: int) -> None:
        self._set(vm, "ACTIVE", "SAVE_MIGRATE")
        self._vmm(vm, "save", source)
        self._vnm(vm, "clean", source)
        self._set(vm, "ACTIVE", "PROLOG_MIGRATE")
        self._set(vm, "ACTIVE", "BOOT")
        self._vmm(vm, "restore", dest)
        self._boot(vm, dest, failure_state=("ACTIVE", "BOOT_MIGRATE_FAILURE"))
        self._set(vm, "ACTIVE", "RUNNING")

    def _shut_down(self, vm: Any, host: int, action: str, lcm_state: str, doing: str) -> None:
        """Shut a RUNNING VM down and clean its network on ``host``; a failed clean puts it
        back to RUNNING and raises, as oned does."""
        self.state.set_action(vm.id, action)
        self._set(vm, "ACTIVE", lcm_state)
        self._vmm(vm, "shutdown", host)
        failed = self._vnm(vm, "clean", host)
        if failed is not None:
            self._set(vm, "ACTIVE", "RUNNING")
            raise ScenarioError(f"Error {doing} VM {vm.id}: {_message(failed)}", failed)

    def poweroff(self, vm_id: int) -> None:
        """``onevm poweroff``: SHUTDOWN_POWEROFF, clean, POWEROFF."""
        with self._operation():
            vm = self._vm(vm_id, (S["ACTIVE"], L["RUNNING"]))
            host = vm.host_id
            self._shut_down(vm, host, "poweroff", "SHUTDOWN_POWEROFF", "powering off")
            self.state.close_history(vm.id, copy=True)
            self._set(vm, "POWEROFF")

    def resume(self, vm_id: int) -> None:
        """``onevm resume`` of a powered-off VM: BOOT_POWEROFF (pre, deploy, post), RUNNING."""
        with self._operation():
            vm = self._vm(vm_id, (S["POWEROFF"], None))
            host = vm.host_id
            self.state.set_action(vm.id, "resume")
            self._set(vm, "ACTIVE", "BOOT_POWEROFF")
            self._boot(vm, host, failure_state=("POWEROFF", "LCM_INIT"))
            self.state.close_history(vm.id, copy=True)
            self._set(vm, "ACTIVE", "RUNNING")

    def _hotplug_state(self, vm: VM) -> Tuple[str, str]:
        return ("POWEROFF", "LCM_INIT") if vm.state == S["POWEROFF"] else ("ACTIVE", "RUNNING")

    def attach_alias(self, vm_id: int, network_id: int, parent: int = 0,
                     ip: Optional[str] = None, ar_id: Optional[int] = None,
                     external: bool = True) -> int:
        """``onevm nic-attach --alias``: returns the new alias's NIC_ID."""
        with self._operation():
            vm = self._vm(vm_id, (S["ACTIVE"], L["RUNNING"]), (S["POWEROFF"], None))
            self._oned(self.state.nic, vm.id, parent)
            back = self._hotplug_state(vm)
            running = vm.state == S["ACTIVE"]
            vnet_id, ar, lease = self._lease(
                vm.id, {"network_id": network_id, "ip": ip, "ar_id": ar_id})
            self.state.set_action(vm.id, "alias-attach")
            alias = self.state.add_alias(vm.id, parent, vnet_id, ar, lease, external,
                                         attach=True)
            nic_id = int(alias["NIC_ID"])
            # oned: ACTIVE/HOTPLUG_NIC, or ACTIVE/HOTPLUG_NIC_POWEROFF for a powered-off VM
            self._set(vm, "ACTIVE", "HOTPLUG_NIC" if running else "HOTPLUG_NIC_POWEROFF")
            failed = None
            if running and external:
                failed = self._vnm(vm, "pre", vm.host_id, only=alias)
                if failed is None:
                    self._vmm(vm, "attach_nic", vm.host_id)
                    failed = self._vnm(vm, "post", vm.host_id, deploy_id=True, only=alias)
            else:
                self._vmm(vm, "attach_nic", vm.host_id)
            if failed is not None:
                self.state.remove_alias(vm.id, nic_id)
                self._free(vnet_id, ar, lease.ip, vm.id)
                self._set(vm, *back)
                raise ScenarioError(f"Error attaching NIC alias: {_message(failed)}",
                                    failed)
            with self.state.lock:
                alias.pop("ATTACH", None)
                self.state.changed()
            self.state.close_history(vm.id, copy=True)
            self._set(vm, *back)
            return nic_id

    def detach_alias(self, vm_id: int, nic_id: int) -> None:
        """``onevm nic-detach`` of a NIC_ALIAS."""
        with self._operation():
            vm = self._vm(vm_id, (S["ACTIVE"], L["RUNNING"]), (S["POWEROFF"], None))
            alias = self._oned(self.state.alias, vm.id, nic_id)
            back = self._hotplug_state(vm)
            running = vm.state == S["ACTIVE"]
            self.state.set_action(vm.id, "alias-detach")
            with self.state.lock:
                alias["ATTACH"] = "YES"
                self.state.changed()
            # oned: ACTIVE/HOTPLUG_NIC, or ACTIVE/HOTPLUG_NIC_POWEROFF for a powered-off VM
            self._set(vm, "ACTIVE", "HOTPLUG_NIC" if running else "HOTPLUG_NIC_POWEROFF")
            self._vmm(vm, "detach_nic", vm.host_id)
            if running and alias.get("EXTERNAL") == "YES":
                failed = self._vnm(vm, "clean", vm.host_id, only=alias)
                if failed is not None:
                    with self.state.lock:
                        alias.pop("ATTACH", None)
                        self.state.changed()
                    self._set(vm, *back)
                    raise ScenarioError(f"Error detaching NIC alias: {_message(failed)}",
                                        failed)
            self.state.remove_alias(vm.id, nic_id)
            self._free_nic(vm.id, alias)
            self.state.close_history(vm.id, copy=True)
            self._set(vm, *back)

    def terminate(self, vm_id: int) -> None:
        """``onevm terminate``: SHUTDOWN, clean, EPILOG, leases freed, DONE."""
        with self._operation():
            vm = self._vm(vm_id, (S["ACTIVE"], L["RUNNING"]), (S["POWEROFF"], None),
                          (S["PENDING"], None), (S["HOLD"], None))
            host = vm.host_id
            if vm.state == S["ACTIVE"]:
                self._shut_down(vm, host, "terminate", "SHUTDOWN", "terminating")
                self._set(vm, "ACTIVE", "EPILOG")
            elif vm.state == S["POWEROFF"]:
                self.state.set_action(vm.id, "terminate")
                self._set(vm, "ACTIVE", "EPILOG")
            for nic in vm.all_nics():
                self._free_nic(vm.id, nic)
            self.state.close_history(vm.id, copy=False)
            with self.state.lock:
                vm.etime = int(time.time())
            self._set(vm, "DONE")

    # -- hooks --

    def add_hook(self, template: Union[str, Mapping[str, Any]]) -> int:
        if isinstance(template, str):
            return self._oned(self.state.allocate_hook, template)
        return self._oned(self.state.add_hook, OrderedDict(
            (k, v if isinstance(v, Mapping) else str(v)) for k, v in template.items()))

    def hook_executions(self, hook_id: int) -> List[ExecutionRecord]:
        return list(self._oned(self.state.hook, hook_id).log)

    def _matches(self, hook_template: Mapping[str, Any], vm: VM) -> bool:
        if str(hook_template.get("TYPE", "")).lower() != "state":
            return False
        if str(hook_template.get("RESOURCE", "")).upper() != "VM":
            return False
        # oned keeps STATE and LCM_STATE (ON is turned into them when the hook is created)
        return (str(hook_template.get("STATE", "")).upper() == _STATE_NAMES.get(vm.state)
                and str(hook_template.get("LCM_STATE", "")).upper()
                == _LCM_NAMES.get(vm.lcm_state))

    def _changed(self, vm: VM, why: str) -> None:
        """A VM state change: record it and fire the matching hooks (onehem)."""
        xml = self.vm_xml(vm.id)
        self._record(Event("state", vm_id=vm.id, detail={
            "state": _STATE_NAMES.get(vm.state), "lcm_state": _LCM_NAMES.get(vm.lcm_state),
            "why": why}))
        with self.state.lock:
            hooks = [h.id for h in self.state.hooks.values() if self._matches(h.template, vm)]
        # onehem is asynchronous: the hook runs once oned has finished the operation, with
        # the XML of the event; queued here, run at the end of the operation (or on
        # flush_hooks() with defer_hooks=True).
        self._pending.extend((hook_id, vm.id, xml) for hook_id in hooks)

    @contextlib.contextmanager
    def _operation(self) -> Iterator[None]:
        """One oned operation: hooks of its state changes run when it has finished."""
        with self._lock:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and not self.defer_hooks:
                    self.flush_hooks()

    def flush_hooks(self, parallel: bool = False) -> List[ExecutionRecord]:
        """Run the queued hook events (``defer_hooks=True``) in order, or all at once with
        ``parallel`` (onehem runs hooks concurrently: two events of one VM may race)."""
        with self._lock:
            pending, self._pending = self._pending, []
            if not parallel:
                runs = [self._run_hook(*item) for item in pending]
                return [r for r in runs if r is not None]
        # outside the lock: the runs record their events and execution records themselves
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, len(pending))) as pool:
            runs = list(pool.map(lambda item: self._run_hook(*item), pending))
        return [r for r in runs if r is not None]

    @property
    def pending_hooks(self) -> int:
        return len(self._pending)

    def _run_hook(self, hook_id: int, vm_id: int, xml: str) -> Optional[ExecutionRecord]:
        hook = self.state.hooks.get(hook_id)
        if hook is None:  # deleted meanwhile
            return None
        remote = drivers.is_yes(hook.get("REMOTE", "NO"))
        vm = self.state.vms.get(vm_id)
        prefix = self._prefix(vm.host_id if vm else None) if remote else []
        result = drivers.run_hook(self.hooks_dir, hook.get("COMMAND"), hook.get("ARGUMENTS"),
                                  xml, drivers.is_yes(hook.get("ARGUMENTS_STDIN", "NO")),
                                  _timeout(hook.get("TIMEOUT"), self.hook_timeout), self.env,
                                  prefix, vm_id, name=f"hook {hook.name}")
        return self._hook_record(hook_id, result, vm_id, remote, retry=False)

    def _hook_record(self, hook_id: int, result: drivers.ExecResult, vm_id: Optional[int],
                     remote: bool, retry: bool) -> ExecutionRecord:
        hook = self.state.hook(hook_id)
        command = drivers.hook_command(self.hooks_dir, hook.get("COMMAND"))
        host = ""
        if remote and vm_id is not None and vm_id in self.state.vms:
            host_id = self.state.vms[vm_id].host_id
            host = self.state.hosts[host_id].name if host_id in self.state.hosts else ""
        record = self.state.record_execution(
            hook_id, result.extra.get("arguments", ""), command, result.stdout, result.stderr,
            result.rc, host, retry)
        self._from_exec(result, vm_id, hook_id=hook_id, execution_id=record.execution_id,
                        retry=retry)
        return record

    def retry_hook(self, hook_id: int, execution_id: int) -> ExecutionRecord:
        """``onehook retry``: the same command with the same arguments, a new record."""
        with self._lock:
            hook = self._oned(self.state.hook, hook_id)
            old = self._oned(self.state.execution, hook_id, execution_id)
            remote = drivers.is_yes(hook.get("REMOTE", "NO"))
            vm_id = _vm_id_of(old.arguments)
            prefix = self._prefix(self.state.vms[vm_id].host_id) if (
                remote and vm_id in self.state.vms) else []
            result = drivers.run_hook_string(
                drivers.hook_command(self.hooks_dir, hook.get("COMMAND")), old.arguments,
                drivers.is_yes(hook.get("ARGUMENTS_STDIN", "NO")),
                _timeout(hook.get("TIMEOUT"), self.hook_timeout), self.env, prefix,
                name=f"hook {hook.name}")
            result.extra["arguments"] = old.arguments
            return self._hook_record(hook_id, result, vm_id, remote, retry=True)

    def _retry_from_rpc(self, hook_id: int, execution_id: int) -> int:
        try:
            return self.retry_hook(hook_id, execution_id).execution_id
        except ScenarioError as exc:
            raise OnedError(OnedError.ACTION, str(exc), hook_id) from None

    def detach(self) -> None:
        """Stop answering ``one.hook.retry`` for the emulator."""
        if self.oned is not None and self.oned.hook_runner == self._retry_from_rpc:
            self.oned.hook_runner = None

    # -- helpers --

    @staticmethod
    def _oned(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except OnedError as exc:
            raise ScenarioError(exc.message) from None


def _message(event: Event) -> str:
    """The error oned shows for a failed step (one_ipam's info for IPAM actions)."""
    return event.detail.get("message") or event.error_message


def _timeout(value: str, default: Optional[float]) -> Optional[float]:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return default
    return seconds if seconds > 0 else default


def _vm_id_of(arguments: str) -> Optional[int]:
    """The VM id inside a hook's argument string ($TEMPLATE), if it is there."""
    from packet_provider.core import hostxml

    for arg in arguments.split():
        try:
            root = hostxml.parse_base64(arg.encode())
        except Exception:  # noqa: BLE001, S112 - not the template argument
            continue
        if root.tag == "VM" and (root.findtext("ID") or "").isdigit():
            return int(root.findtext("ID"))
    return None


def _check_user_ar(attrs: Mapping[str, str]) -> None:
    # oned checks the user's AR before asking the IPAM driver: a (fake) first IP is required
    from packet_lab.oned.objects import check_ar

    check_ar(attrs)


def _driver_ar(stdout: str, event: Event) -> OrderedDict[str, str]:
    try:
        for name, value in parse_template(stdout):
            if name == "AR" and isinstance(value, Mapping):
                out = OrderedDict(value)
                out.pop("AR_ID", None)
                return out
    except TemplateError as exc:
        raise ScenarioError(f"Error registering address range: bad driver output: {exc}",
                            event) from None
    raise ScenarioError("Error registering address range: the driver printed no AR", event)


def _driver_address(stdout: str, event: Event) -> str:
    try:
        for name, value in parse_template(stdout):
            if name == "ADDRESS" and isinstance(value, Mapping) and value.get("IP"):
                return value["IP"]
    except TemplateError as exc:
        raise ScenarioError(f"Cannot get an address: bad driver output: {exc}",
                            event) from None
    raise ScenarioError("Cannot get an address: the driver printed no ADDRESS/IP", event)


def _address(ar: AddressRange, ip: str) -> OrderedDict:
    """The ADDRESS of an allocate or free request, as oned writes it: MAC, IP, SIZE."""
    index = ar.index_of(ip)
    mac = ar.mac_at(index) if index is not None else ""
    return OrderedDict([("MAC", mac), ("IP", ip), ("SIZE", "1")])
