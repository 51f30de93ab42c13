"""
Fast DDS set-up shared by the launch file, the tests and the nodes (no ROS import).

- :func:`profile_variables`: the environment variable(s) through which the installed Fast DDS
  reads an XML profile. Fast DDS 2 (Humble, Iron, Jazzy) reads ``FASTRTPS_DEFAULT_PROFILES_FILE``;
  Fast DDS 3 (Kilted and later) reads ``FASTDDS_DEFAULT_PROFILES_FILE`` and warns at every start
  when it finds the old name. Setting only the one it reads keeps start-up quiet on both.
- :func:`stale_shm_segments` and :func:`clean_shm`: shared-memory segments that a killed
  process (``kill -9``, a crash) leaves in /dev/shm are never reclaimed by Fast DDS itself;
  ``fastdds shm clean`` (Fast DDS's own tool) removes the ones no live process holds.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

OLD, NEW = 'FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_DEFAULT_PROFILES_FILE'
_FAST_DDS_2 = ('foxy', 'galactic', 'humble', 'iron', 'jazzy')


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
    if distro in _FAST_DDS_2:
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


def clean_shm(timeout: float = 10.0) -> Optional[str]:
    """
    Run ``fastdds shm clean``; return its one-line summary, or None when the tool is missing.

    Only segments that no live process holds are removed (Fast DDS checks their locks), so it
    is safe while other ROS 2 processes run.
    """
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
    cmd = [sys.executable, os.path.normpath(script)] if os.path.isfile(script) else [tool]
    try:
        out = subprocess.run(cmd + ['shm', 'clean'], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 'fastdds shm clean failed: {}'.format(exc)
    lines = out.stdout.decode('utf-8', 'replace').strip().splitlines()
    return lines[-1] if lines else 'fastdds shm clean: done'


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
