"""Each Fermi user's processes under a Unix account of their own, when the platform runs as root
with no container engine — the way The Littlest JupyterHub gives every hub user a system user.

A user ``alice`` gets the account ``fermi-alice`` (``account_name``) on first use, with its own
group, a member of ``fermi-users``, its home being the user's folder of the data dir
(``DATA/users/alice``, mode 0700, owned by it). Dev servers start under it (JupyterHub's
``LocalProcessSpawner`` user switching), job processes switch to it before running anything of
the user (``become``), after the control plane handed them their job folder (``hand_over``).

The platform's own files stay root's: the data dir is 0700 and its folders that lead to homes
and job folders (``users``, ``jobs``) give ``fermi-users`` search permission only (``x`` in a
POSIX ACL: an account reaches its own folder by name, lists nothing); the folders that lead to
the platform's Python get the same, so that an account can run it even where it is installed
under a private folder such as /root. Everything else (the database, tokens, other users' homes
and job folders, the processes' environments in /proc) is the platform's or another account's,
out of reach of a notebook.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import re
import stat
import struct
import subprocess
import sys
from pathlib import Path

PREFIX = "fermi-"
GROUP = "fermi-users"
MAX_NAME = 32  # useradd's limit on Linux (utmp's ut_user)
# how `fermi up` lets an admin keep every workload under the platform's own account even as root
OPT_OUT_ENV = "FERMI_UNIX_ACCOUNTS"

# POSIX ACLs in the kernel's xattr encoding (linux/posix_acl_xattr.h): a version header, then
# (tag, permissions, id) entries sorted by tag then id. Written directly, so that no acl package
# needs to be installed on the machine.
_ACL = "system.posix_acl_access"
_VERSION, _UNDEFINED = 2, 0xFFFFFFFF
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_SEARCH = 0o1


class AccountError(RuntimeError):
    """Accounts cannot be used here; the message says why and what to do."""


def wanted() -> bool:
    """Whether `fermi up` should run workloads under accounts: as root, when they run on this
    machine (not on Kubernetes), unless the admin said ``FERMI_UNIX_ACCOUNTS=off``."""
    local = os.environ.get("FERMI_BACKEND", "local").strip().lower() != "kubernetes"
    opted_out = os.environ.get(OPT_OUT_ENV, "").strip().lower() in ("off", "0", "no", "false")
    return os.geteuid() == 0 and local and not opted_out


def account_name(username: str) -> str:
    """The account of hub user ``username``: ``fermi-`` and the name when that is a valid,
    short enough Unix name; else a readable part and a hash of the full name, so that two hub
    names never share an account (``Alice`` and ``alice`` differ)."""
    simple = re.sub(r"[^a-z0-9_-]", "-", username.lower())
    if simple == username and len(PREFIX) + len(simple) <= MAX_NAME:
        return PREFIX + simple
    digest = hashlib.sha256(username.encode()).hexdigest()[:8]
    keep = MAX_NAME - len(PREFIX) - len(digest) - 1
    return f"{PREFIX}{simple[:keep].strip('-_') or 'user'}-{digest}"


def ensure_group() -> int:
    try:
        return grp.getgrnam(GROUP).gr_gid
    except KeyError:
        pass
    _run(["groupadd", "--system", "--force", GROUP])
    return grp.getgrnam(GROUP).gr_gid


def ensure_account(username: str, home: Path) -> pwd.struct_passwd:
    """The account of ``username``, created on first use, its home ``home`` made or handed
    over (an earlier run without accounts left it root's; an account made for another data
    dir is pointed at this one's)."""
    name = account_name(username)
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        ensure_group()
        try:
            _run(["useradd", "--system", "--no-create-home", "--user-group", "--groups", GROUP,
                  "--home-dir", str(home), "--shell", "/bin/bash",
                  "--comment", f"Fermi user {username}", name])
        except AccountError as error:
            try:  # the hub and the control plane made it at once: one won
                pwd.getpwnam(name)
            except KeyError:
                raise error from None
        account = pwd.getpwnam(name)
    if account.pw_dir != str(home):
        _run(["usermod", "--home", str(home), name])
        account = pwd.getpwnam(name)
    home.mkdir(parents=True, exist_ok=True)
    if home.lstat().st_uid != account.pw_uid:
        hand_over(home, account)
    return account


def hand_over(folder: Path, account: pwd.struct_passwd) -> None:
    """Make ``folder`` and what is in it the account's, mode 0700 at the top. Links are changed
    themselves, never followed: the folder is a workload's, which may have planted one."""
    os.lchown(folder, account.pw_uid, account.pw_gid)
    os.chmod(folder, 0o700)
    for root, folders, files in os.walk(folder):  # os.walk enters no linked folder
        for name in folders + files:
            path = os.path.join(root, name)
            # a second name of a file elsewhere (a hard link) stays as it is: handing it over
            # would hand over that file, wherever it lives
            if os.lstat(path).st_nlink == 1 or name in folders:
                os.lchown(path, account.pw_uid, account.pw_gid)


def become(name: str) -> None:
    """Switch this process to the account for good: its groups and group while still root,
    then the user, as JupyterHub's ``set_user_setuid`` does for the dev servers (the job
    launcher does not import it: that costs 1 s and 40 MB). A no-op when the process runs as
    that account already (a warm slot switched before its kernel started)."""
    account = pwd.getpwnam(name)
    if os.geteuid() == account.pw_uid:
        return
    os.setgroups(os.getgrouplist(name, account.pw_gid))
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)


def account_env(account: pwd.struct_passwd) -> dict[str, str]:
    """What a process of the account is told about itself (root's HOME is not its own)."""
    return {"HOME": account.pw_dir, "USER": account.pw_name, "LOGNAME": account.pw_name}


# -- what `fermi up` prepares ---------------------------------------------------------------------


def prepare(data: Path) -> list[str]:
    """Make accounts work for the data dir ``data``: the group exists, it may search the
    folders that lead to homes, job folders and the platform's Python, and an account can
    really start that Python. Returns the folders outside the data dir given search
    permission just now (for the terminal); raises ``AccountError`` when accounts cannot work
    here."""
    gid = ensure_group()
    granted = []
    for folder in (data / "users", data / "jobs"):
        folder.mkdir(mode=0o700, exist_ok=True)
    # the data dir itself and what leads to it (it may live in a private folder, as a test's
    # does), then the interpreter, its library, the environment and Fermi
    for needed in (data / "users", data / "jobs", *_platform_paths()):
        for folder in reversed([needed, *needed.parents]):
            searchable = not folder.is_dir() or folder.stat().st_mode & _SEARCH
            # the data dir's own folders lose the entry's effect at each start (the data dir
            # is made private again first): said once in the README, not at every start
            inside = folder == data or data in folder.parents
            if not searchable and grant_search(folder, gid) and not inside:
                granted.append(str(folder))
    _check_python(gid)
    return granted


def _platform_paths() -> list[Path]:
    """What an account's process runs: the interpreter, its standard library, the environment's
    packages and Fermi itself (an editable install lives outside the environment)."""
    import fermi_extension

    return [Path(p).resolve() for p in (sys.executable, sys.prefix, sys.base_prefix,
                                         os.path.dirname(fermi_extension.__file__))]


def _check_python(gid: int) -> None:
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        return

    def drop() -> None:
        os.setgroups([gid])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    result = subprocess.run([sys.executable, "-c", "import fermi_extension, jupyterhub"],
                            preexec_fn=drop, capture_output=True, text=True, cwd="/", timeout=60,
                            env={"PATH": os.environ.get("PATH", "")})
    if result.returncode:
        tail = (result.stderr.strip().splitlines() or ["?"])[-1]
        raise AccountError(f"another account cannot run the platform's Python ({sys.executable}: "
                           f"{tail}); install Fermi where other accounts can read it")


def grant_search(folder: Path, gid: int) -> bool:
    """Let group ``gid`` search ``folder`` (enter it and reach what it names, list nothing):
    an entry in its access ACL, keeping the entries it has. False if it could already."""
    entries = _read_acl(folder)
    mode = stat.S_IMODE(os.stat(folder).st_mode)
    if entries is None:  # no ACL: the mode is the whole of it
        entries = {(_USER_OBJ, _UNDEFINED): mode >> 6 & 7, (_GROUP_OBJ, _UNDEFINED): mode >> 3 & 7,
                   (_OTHER, _UNDEFINED): mode & 7}
    if entries.get((_GROUP, gid), 0) & _SEARCH and entries.get((_MASK, _UNDEFINED), 7) & _SEARCH:
        return False
    entries[(_GROUP, gid)] = entries.get((_GROUP, gid), 0) | _SEARCH
    # the mask caps every named entry: widen it by search alone, whatever it allowed before
    mask = entries.get((_MASK, _UNDEFINED), entries[(_GROUP_OBJ, _UNDEFINED)])
    entries[(_MASK, _UNDEFINED)] = mask | _SEARCH
    try:
        os.setxattr(folder, _ACL, _encode(entries))
    except OSError as error:
        raise AccountError(f"could not let group {GROUP} enter {folder} ({error.strerror}: this "
                           "file system may not support ACLs)") from None
    return True


def _read_acl(folder: Path) -> dict | None:
    try:
        raw = os.getxattr(folder, _ACL)
    except OSError:  # ENODATA: none; ENOTSUP: none possible (setting it says so)
        return None
    count = (len(raw) - 4) // 8
    return {(tag, ident): perm
            for tag, perm, ident in struct.iter_unpack("<HHI", raw[4:4 + 8 * count])}


def _encode(entries: dict) -> bytes:
    return struct.pack("<I", _VERSION) + b"".join(
        struct.pack("<HHI", tag, perm, ident) for (tag, ident), perm in sorted(entries.items()))


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise AccountError(f"{' '.join(command)} failed: {result.stderr.strip()}")
