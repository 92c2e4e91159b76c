"""The parts of oned's VM XML the components read, as plain values.

Works on any ElementTree-like element (standard library or lxml), so the hypervisor side
and the frontend share one model. Values are validated here, at the edge: an IP that is not
an IPv4 address or an id that is not a number is an InputError, never a surprise later.

Two readers build that model:

- :func:`parse_vm`, for the whole VM (``one.vm.info``, a state hook's ``$TEMPLATE``): STATE
  and each history record's SEQ and HID are required, the hook decides with them.
- :func:`parse_vnm_view`, for what a VNM action reads on its stdin: the cut-down ``<VM>``
  ``one_vmm_exec`` builds, with no STATE, LCM_STATE or NAME, the history as separate
  ``HISTORY_RECORDS`` wrappers holding only HOSTNAME, DS_ID and VM_MAD, and every NIC,
  NIC_ALIAS and SECURITY_GROUP_RULE in a ``TEMPLATE`` wrapper of its own. It also takes the
  whole VM. Its model has ``state`` None and no history (the VNM reads neither).

Both find NICs and aliases across every ``TEMPLATE`` wrapper (``TEMPLATE/NIC``); a whole
VM has exactly one.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from packet_provider.core import validate
from packet_provider.core.errors import InputError

# oned's numeric VM states (include/VirtualMachine.h, 5.12)
STATE_ACTIVE = 3
STATE_SUSPENDED = 5
STATE_DONE = 6
STATE_POWEROFF = 8
LCM_HOTPLUG_NIC = 25
LCM_HOTPLUG_NIC_POWEROFF = 65  # pyone LCM_STATE (the reference table says 61: wrong)

ALIAS_VN_MAD = "alias_sdnat"


@dataclass(frozen=True)
class Nic:
    nic_id: int
    name: str
    ip: Optional[ipaddress.IPv4Address]
    network_id: Optional[int]
    vn_mad: str
    attach: bool = False  # ATTACH=YES: being hot attached or detached
    bridge: str = ""  # BRIDGE as oned wrote it (checked where it is used)


@dataclass(frozen=True)
class NicAlias:
    nic_id: int
    name: str
    parent: str
    parent_id: Optional[int]
    ip: Optional[ipaddress.IPv4Address]
    network_id: Optional[int]
    ar_id: Optional[int]
    vn_mad: str
    external: bool  # EXTERNAL=YES
    attach: bool
    # an EXTERNAL element, whatever its value: what oned tests to run VNM steps on a hot
    # attach or detach of the alias (integration reference 4.3)
    has_external: bool = False


@dataclass(frozen=True)
class History:
    seq: int
    hid: int
    hostname: str
    action: int


@dataclass(frozen=True)
class VM:
    id: int
    name: str
    state: Optional[int]  # None only from parse_vnm_view (the VNM view has no STATE)
    lcm_state: int
    deploy_id: str
    nics: Tuple[Nic, ...]
    aliases: Tuple[NicAlias, ...]
    history: Tuple[History, ...]

    @property
    def current_history(self) -> Optional[History]:
        """The last history record: the host the VM is on (or was on, when DONE)."""
        return self.history[-1] if self.history else None

    def parent_of(self, alias: NicAlias) -> Optional[Nic]:
        """The NIC an alias belongs to, by PARENT_ID when present, else by PARENT name."""
        for nic in self.nics:
            if alias.parent_id is not None and nic.nic_id == alias.parent_id:
                return nic
        if alias.parent_id is None:
            for nic in self.nics:
                if nic.name == alias.parent:
                    return nic
        return None


def child_text(element: Any, path: str) -> str:
    """The stripped text of ``element``'s child at ``path`` ("" when absent or empty)."""
    found = element.find(path)
    if found is None or found.text is None:
        return ""
    return found.text.strip()


_INTEGER = re.compile(r"-?[0-9]{1,18}")


def _int(element: Any, path: str, what: str, required: bool = True) -> Optional[int]:
    text = child_text(element, path)
    if not text:
        if required:
            raise InputError(f"{what} is missing")
        return None
    if not _INTEGER.fullmatch(text):
        raise InputError(f"{what} must be an integer, got {text[:40]!r}")
    return int(text)


def _ip(element: Any, what: str) -> Optional[ipaddress.IPv4Address]:
    text = child_text(element, "IP")
    return validate.ipv4(text, what) if text else None


def _yes(element: Any, path: str) -> bool:
    return child_text(element, path).upper() == "YES"


def _nic_id(element: Any, what: str) -> int:
    text = child_text(element, "NIC_ID")
    if not text:
        raise InputError(f"{what} is missing")
    return validate.object_id(text, what)


def parse_nic(element: Any) -> Nic:
    nic_id = _nic_id(element, "NIC/NIC_ID")
    return Nic(
        nic_id=nic_id,
        name=child_text(element, "NAME") or f"NIC{nic_id}",
        ip=_ip(element, f"NIC {nic_id} IP"),
        network_id=_int(element, "NETWORK_ID", f"NIC {nic_id} NETWORK_ID", required=False),
        vn_mad=child_text(element, "VN_MAD"),
        attach=_yes(element, "ATTACH"),
        bridge=child_text(element, "BRIDGE"),
    )


def parse_alias(element: Any) -> NicAlias:
    nic_id = _nic_id(element, "NIC_ALIAS/NIC_ID")
    return NicAlias(
        nic_id=nic_id,
        name=child_text(element, "NAME"),
        parent=child_text(element, "PARENT"),
        parent_id=_int(element, "PARENT_ID", f"NIC_ALIAS {nic_id} PARENT_ID", required=False),
        ip=_ip(element, f"NIC_ALIAS {nic_id} IP"),
        network_id=_int(element, "NETWORK_ID", f"NIC_ALIAS {nic_id} NETWORK_ID", required=False),
        ar_id=_int(element, "AR_ID", f"NIC_ALIAS {nic_id} AR_ID", required=False),
        vn_mad=child_text(element, "VN_MAD"),
        external=_yes(element, "EXTERNAL"),
        attach=_yes(element, "ATTACH"),
        has_external=element.find("EXTERNAL") is not None,
    )


def parse_history(element: Any) -> History:
    return History(
        seq=_int(element, "SEQ", "HISTORY/SEQ"),
        hid=_int(element, "HID", "HISTORY/HID"),
        hostname=child_text(element, "HOSTNAME"),
        action=_int(element, "ACTION", "HISTORY/ACTION", required=False) or 0,
    )


def _nics_and_aliases(root: Any) -> Tuple[Tuple[Nic, ...], Tuple[NicAlias, ...]]:
    """Every NIC and NIC_ALIAS under any ``TEMPLATE`` child, in document order."""
    return (tuple(parse_nic(e) for e in root.findall("TEMPLATE/NIC")),
            tuple(parse_alias(e) for e in root.findall("TEMPLATE/NIC_ALIAS")))


def _vm_root(root: Any) -> int:
    if root.tag != "VM":
        raise InputError(f"expected a <VM> document, got <{root.tag}>")
    return validate.object_id(child_text(root, "ID"), "VM ID")


def parse_vm(root: Any) -> VM:
    """Build a :class:`VM` from a whole ``<VM>`` element (STATE, history SEQ and HID
    required)."""
    vm_id = _vm_root(root)
    nics, aliases = _nics_and_aliases(root)
    history = tuple(parse_history(e) for e in root.findall("HISTORY_RECORDS/HISTORY"))
    return VM(
        id=vm_id,
        name=child_text(root, "NAME"),
        state=_int(root, "STATE", "VM STATE"),
        lcm_state=_int(root, "LCM_STATE", "VM LCM_STATE", required=False) or 0,
        deploy_id=child_text(root, "DEPLOY_ID"),
        nics=nics,
        aliases=aliases,
        history=tuple(sorted(history, key=lambda h: h.seq)),
    )


def parse_vnm_view(root: Any) -> VM:
    """Build a :class:`VM` from the ``<VM>`` a VNM action reads (the VNM view, or a whole
    VM): ID, DEPLOY_ID, NICs and aliases; STATE, NAME and history are not read."""
    vm_id = _vm_root(root)
    nics, aliases = _nics_and_aliases(root)
    return VM(id=vm_id, name=child_text(root, "NAME"), state=None, lcm_state=0,
              deploy_id=child_text(root, "DEPLOY_ID"), nics=nics, aliases=aliases,
              history=())
