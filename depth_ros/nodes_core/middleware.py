"""
DDS set-up shared by the launch file, the tests and the nodes (no ROS import).

- :func:`profile_variables`: the environment variable(s) through which the installed Fast DDS
  reads an XML profile. Fast DDS 2 (Humble, Iron, Jazzy) reads ``FASTRTPS_DEFAULT_PROFILES_FILE``;
  Fast DDS 3 (Kilted and later) reads ``FASTDDS_DEFAULT_PROFILES_FILE`` and warns at every start
  when it finds the old name. Setting only the one it reads keeps start-up quiet on both.
- :func:`shm_clean_note` and :func:`clean_shm`: shared-memory segments that a killed
  process (``kill -9``, a crash) leaves in /dev/shm are never reclaimed by Fast DDS itself;
  ``fastdds shm clean`` (Fast DDS's own tool) removes the ones no live process holds. The
  launch file runs it where Fast DDS is the RMW, and logs a line only when it removed
  something or failed.
- :func:`cyclonedds_environment`: ``CYCLONEDDS_URI`` naming config/cyclonedds_large_messages.xml
  (and config/cyclonedds_localhost.xml with ``ROS_LOCALHOST_ONLY=1``), unless the user set one.
- :func:`receive_buffer_note`: the one line that says when the kernel's ``net.core.rmem_max``
  caps the socket receive buffer that the Cyclone DDS configuration asks for, and what to set.
- :func:`max_message_bytes` and :func:`too_large_text`: the largest message Fast DDS carries
  whole with our profile, and the line for a frame or cloud above it.
- :func:`missing_profile_note`: the one line a node run by hand logs when Fast DDS runs with
  no XML profile at all (the launch file sets ours), and what to export.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from typing import Dict, List, NamedTuple, Optional, Tuple
import xml.etree.ElementTree as ElementTree

from depth_ros.ros.compat import FAST_DDS_2_DISTROS
from depth_ros.util import describe_error

OLD, NEW = 'FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_DEFAULT_PROFILES_FILE'
CYCLONEDDS_URI = 'CYCLONEDDS_URI'
CYCLONEDDS_CONFIG = 'cyclonedds_large_messages.xml'
CYCLONEDDS_LOCALHOST = 'cyclonedds_localhost.xml'
RMEM_MAX = '/proc/sys/net/core/rmem_max'


def _installed_fastdds_major(environ) -> Optional[int]:
    """Return the major version of the Fast DDS library next to ROS (None: not found)."""
    for prefix in environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep):
        if not prefix:
            continue
        lib = os.path.join(prefix, 'lib')
        try:
            names = os.listdir(lib)
        except OSError:
            continue
        if any(n.startswith('libfastdds.so.3') for n in names):
            return 3
        if any(n.startswith('libfastrtps.so.2') for n in names):
            return 2
    try:
        from importlib.metadata import version, PackageNotFoundError
    except ImportError:  # pragma: no cover - Python < 3.8
        return None
    try:
        return int(version('ros-fastdds').split('.')[0])   # the PyPI ROS wheels
    except (PackageNotFoundError, ValueError):
        return None


def profile_variables(environ=None) -> Tuple[str, ...]:
    """Return the profile variable name(s) the installed Fast DDS reads (both if unknown)."""
    env = os.environ if environ is None else environ
    distro = env.get('ROS_DISTRO', '').lower()
    if distro in FAST_DDS_2_DISTROS:
        return (OLD,)
    if distro:
        return (NEW,)
    major = _installed_fastdds_major(env)
    if major == 2:
        return (OLD,)
    if major == 3:
        return (NEW,)
    return (OLD, NEW)


def profile_in_use(environ=None) -> Optional[str]:
    """Return the Fast DDS profile file the environment already names, if any."""
    env = os.environ if environ is None else environ
    return env.get(NEW) or env.get(OLD) or None


def profile_environment(profile: str, environ=None) -> Dict[str, str]:
    """Return {variable: profile} to set, unless a profile is already configured."""
    if profile_in_use(environ):
        return {}
    return {name: profile for name in profile_variables(environ)}


def rmw(environ=None) -> str:
    """Return the RMW implementation the environment selects (Fast DDS when unset)."""
    env = os.environ if environ is None else environ
    return env.get('RMW_IMPLEMENTATION', '') or 'rmw_fastrtps_cpp'


def localhost_only(environ=None) -> bool:
    """Return whether ROS_LOCALHOST_ONLY=1 (Humble's switch; later distros still read it)."""
    env = os.environ if environ is None else environ
    return env.get('ROS_LOCALHOST_ONLY', '') == '1'


def cyclonedds_environment(config_dir: str, environ=None) -> Dict[str, str]:
    """
    Return {'CYCLONEDDS_URI': ...} naming our Cyclone DDS configuration in ``config_dir``.

    Empty when the environment already sets CYCLONEDDS_URI: a user's configuration (a network
    interface, peers, a bigger buffer) is kept as it is. With ROS_LOCALHOST_ONLY=1 the
    localhost file follows (unicast discovery on the loopback interface, see its comment).
    Harmless where another RMW runs: only Cyclone DDS reads the variable.
    """
    env = os.environ if environ is None else environ
    if env.get(CYCLONEDDS_URI):
        return {}
    files = [CYCLONEDDS_CONFIG] + ([CYCLONEDDS_LOCALHOST] if localhost_only(env) else [])
    return {CYCLONEDDS_URI: ','.join('file://' + os.path.join(config_dir, f) for f in files)}


_MEMSIZE = {'B': 1, 'KiB': 1024, 'kB': 1024, 'MiB': 1 << 20, 'MB': 1 << 20, 'GiB': 1 << 30,
            'GB': 1 << 30}   # Cyclone DDS's units (its kB and MB are 1024-based too)


def _memsize(text: str) -> Optional[int]:
    text = text.strip()
    for unit in sorted(_MEMSIZE, key=len, reverse=True):
        if text.endswith(unit):
            number = text[:-len(unit)].strip()
            try:
                return int(float(number) * _MEMSIZE[unit])
            except ValueError:
                return None
    try:
        return int(text)
    except ValueError:
        return None


def cyclonedds_receive_buffer(path: str) -> Optional[int]:
    """Return the socket receive buffer (bytes) a Cyclone DDS XML file asks for, or None."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    for element in root.iter():
        if element.tag.split('}')[-1] == 'SocketReceiveBufferSize':
            # max is what Cyclone requests; min alone is requested when max is "default".
            for attribute in ('max', 'min'):
                size = _memsize(element.get(attribute, 'default'))
                if size is not None:
                    return size
    return None


def rmem_max(path: str = RMEM_MAX) -> Optional[int]:
    """Return the kernel's largest socket receive buffer (bytes), or None if unreadable."""
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def receive_buffer_note(config: str, environ=None, limit: Optional[int] = None
                        ) -> Optional[str]:
    """
    Return one line when net.core.rmem_max caps the receive buffer ``config`` asks for.

    Only with Cyclone DDS as the RMW and ``config`` in use (CYCLONEDDS_URI names it). Linux
    grants ``min(request, rmem_max)`` (doubled for its own bookkeeping); Cyclone DDS goes on
    with what it got, silently, and best-effort images larger than the buffer then get lost.
    """
    env = os.environ if environ is None else environ
    if rmw(env) != 'rmw_cyclonedds_cpp' or os.path.basename(config) not in \
            env.get(CYCLONEDDS_URI, ''):
        return None
    wanted = cyclonedds_receive_buffer(config)
    limit = rmem_max() if limit is None else limit
    if wanted is None or limit is None or limit >= wanted:
        return None
    return 'Cyclone DDS: net.core.rmem_max ({} bytes) caps the {}-byte socket receive buffer ' \
        'of {}, and best-effort images may be lost: sudo sysctl -w net.core.rmem_max={} ' \
        '(and in /etc/sysctl.d/ to keep it)'.format(limit, wanted, os.path.basename(config),
                                                    wanted)


FASTDDS_RMWS = ('rmw_fastrtps_cpp', 'rmw_fastrtps_dynamic_cpp')


def uses_fastdds(environ=None) -> bool:
    """
    Return whether the RMW in use is Fast DDS.

    RMW_IMPLEMENTATION unset is the distribution's default, Fast DDS on Humble and Kilted (and
    every release between); else rmw_fastrtps_cpp or rmw_fastrtps_dynamic_cpp.
    """
    return rmw(environ).strip() in FASTDDS_RMWS


def fastdds_command() -> Optional[List[str]]:
    """Return the command that runs Fast DDS's ``fastdds`` tool, or None when it is missing."""
    tool = shutil.which('fastdds')
    beside = os.path.join(os.path.dirname(sys.executable), 'fastdds')   # a venv not on PATH
    if tool is None and os.access(beside, os.X_OK):
        tool = beside
    if tool is None:
        return None
    # The `fastdds` wrapper runs tools/fastdds/fastdds.py with whatever `python3` is first on
    # PATH; run it with this interpreter, whose packages (psutil) are the ROS environment's.
    script = os.path.join(os.path.dirname(os.path.realpath(tool)), os.pardir, 'tools',
                          'fastdds', 'fastdds.py')
    return [sys.executable, os.path.normpath(script)] if os.path.isfile(script) else [tool]


class ShmClean(NamedTuple):
    """
    What ``fastdds shm clean`` did.

    ``cleaned``: how many zombie segments and ports (and, Fast DDS 3 with ``--force``, data-
    sharing segments) it removed, None when it failed; ``text``: what it removed, or why it
    failed, in one line.
    """

    cleaned: Optional[int]
    text: str


_CLEANED = re.compile(r'^\s*(\d+)\s+(\S.*?)\s+cleaned\s*$')


def shm_clean_counts(output: str) -> Optional[Dict[str, int]]:
    """
    Return ``fastdds shm clean``'s counts, {'zombie segments': 2, 'zombie ports': 0, ...}.

    The tool (Fast DDS 2 on Humble, 3 on Kilted) prints ``shm.clean:``, the ports and segments
    in use, then one ``<n> <what> cleaned`` line per kind. None when no such line is there
    (not the tool's output).
    """
    counts = {}
    for line in output.splitlines():
        match = _CLEANED.match(line)
        if match:
            counts[match.group(2)] = counts.get(match.group(2), 0) + int(match.group(1))
    return counts or None


def clean_shm(timeout: float = 10.0) -> Optional[ShmClean]:
    """
    Run ``fastdds shm clean``: a :class:`ShmClean`, or None when the tool is missing.

    Only segments that no live process holds are removed (Fast DDS checks their locks), so it
    is safe while other ROS 2 processes run. Fast DDS 2 (Humble) cleans ``fastrtps_*`` files,
    Fast DDS 3 (Kilted) ``fastdds_*``.
    """
    cmd = fastdds_command()
    if cmd is None:
        return None
    try:
        out = subprocess.run(cmd + ['shm', 'clean'], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return ShmClean(None, 'fastdds shm clean failed: no answer within {:g} s'.format(
            timeout))
    except OSError as exc:
        return ShmClean(None, 'fastdds shm clean failed: {}'.format(describe_error(exc)))
    text = out.stdout.decode('utf-8', 'replace')
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    counts = shm_clean_counts(text)
    if out.returncode != 0 or counts is None:
        return ShmClean(None, 'fastdds shm clean failed (exit code {}): {}'.format(
            out.returncode, lines[-1] if lines else 'no output'))
    cleaned = sum(counts.values())
    removed = ['{} {}'.format(n, what[:-1] if n == 1 and what.endswith('s') else what)
               for what, n in counts.items() if n]
    return ShmClean(cleaned, 'fastdds shm clean removed {} that killed processes left in '
                    '/dev/shm'.format(' and '.join(removed)) if cleaned else
                    'fastdds shm clean: nothing to remove')


def shm_clean_note(environ=None, timeout: float = 10.0) -> Optional[str]:
    """
    Clean Fast DDS's zombie shared memory where Fast DDS is the RMW; return the line to log.

    None, and nothing run, where another RMW is in use (Cyclone DDS: Fast DDS's files are not
    ours to clean); None when there was nothing to remove or the tool is missing. The line
    says what was removed, or why the tool failed.
    """
    if not uses_fastdds(environ):
        return None
    result = clean_shm(timeout)
    if result is None or result.cleaned == 0:
        return None
    return 'shared memory: ' + result.text


def shm_segments(root: str = '/dev/shm') -> List[Tuple[str, int]]:
    """List the Fast DDS segments in ``root``: (name, bytes) of fastrtps_*/fastdds_* files."""
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    out = []
    for name in names:
        if name.startswith(('fastrtps_', 'fastdds_')):
            try:
                out.append((name, os.stat(os.path.join(root, name)).st_size))
            except OSError:
                continue
    return out


# ------------------------------------------------------------------------- message limits
def _profile_shm_limit(path: str) -> Optional[int]:
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    limits = []
    for desc in root.iter():
        if not desc.tag.endswith('transport_descriptor'):
            continue
        kind = [c.text for c in desc if c.tag.endswith('type')]
        size = [c.text for c in desc if c.tag.endswith('maxMessageSize')]
        if kind and kind[0] and kind[0].strip() == 'SHM' and size and size[0]:
            try:
                limits.append(int(size[0].strip()))
            except ValueError:
                continue
    return max(limits) if limits else None


# Fast DDS's own default profile files, read from the working directory (2.x, 3.x).
CWD_PROFILES = ('DEFAULT_FASTRTPS_PROFILES.xml', 'DEFAULT_FASTDDS_PROFILES.xml')


def missing_profile_note(environ=None, cwd: Optional[str] = None) -> Optional[str]:
    """
    Return the line for Fast DDS running with no XML profile (None: another RMW, or a profile).

    Without one, a message above Fast DDS's default 0.5 MB shared-memory segment (a frame,
    depth, a cloud) goes in UDP fragments, and best effort loses whole frames (1 of 40 reached
    the cloud in docs/ros.md's test). The launch file sets config/fastdds_large_messages.xml;
    nodes run by hand (``ros2 run``) need it exported. A profile the environment names, or
    Fast DDS's default file in the working directory (``cwd``; None: the process's), counts.
    """
    env = os.environ if environ is None else environ
    if not rmw(env).startswith('rmw_fastrtps') or profile_in_use(env):
        return None
    here = os.getcwd() if cwd is None else cwd
    if any(os.path.isfile(os.path.join(here, name)) for name in CWD_PROFILES):
        return None
    names = profile_variables(env)
    path = '$(ros2 pkg prefix depth_ros)/share/depth_ros/config/fastdds_large_messages.xml'
    export = 'export {}={}'.format(names[-1], path)
    if len(names) > 1:
        export += ' (Fast DDS 2: {})'.format(names[0])
    return 'Fast DDS runs with no XML profile: frames, depth and clouds above its 0.5 MB ' \
        'shared-memory segment go in UDP fragments, and best-effort subscribers lose most ' \
        'of them. The launch file sets ours; run by hand, {}'.format(export)


def max_message_bytes(environ=None) -> Optional[int]:
    """
    Return the largest message the middleware carries whole, or None when unknown.

    With Fast DDS and our profile (config/fastdds_large_messages.xml), messages up to the SHM
    transport's ``maxMessageSize`` (32 MiB) travel in one shared-memory buffer; larger ones
    are cut into UDP fragments and, best effort, lost now and then without a word. Other
    middlewares and profiles without an SHM limit: None (no check).
    """
    env = os.environ if environ is None else environ
    override = env.get('DEPTH_ROS_MAX_MESSAGE_BYTES')
    if override:
        # Another middleware's limit, or a test's: the bound the nodes refuse to exceed.
        return int(override)
    if not rmw(env).startswith('rmw_fastrtps'):
        return None
    path = profile_in_use(env)
    return _profile_shm_limit(path) if path else None


def too_large_text(what: str, nbytes: int, limit: int, fix: str) -> str:
    """Return the line for a message above the middleware's limit, naming the fix."""
    return '{} is {:.1f} MB, above the {:.1f} MB that Fast DDS carries whole (SHM ' \
        'maxMessageSize of the profile); it would be lost in UDP fragments: {}'.format(
            what, nbytes / 1e6, limit / 1e6, fix)
