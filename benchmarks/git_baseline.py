"""
Load ``depth_ros.core`` as it was at a git commit, beside today's, for same-run baselines.

Benchmarks compare today's core with an earlier one in the same process and the same rounds
(interleaved), so that a noisy machine moves both figures alike. Instead of keeping a frozen
copy of old code in the tree, the old package is read from git history::

    old = load_core('5958d37')            # a module namespace: old.alignment.MetricAligner ...
    old.alignment.MetricAligner(**options)

``depth_ros/core`` and ``depth_ros/util.py`` of that commit are extracted into a temporary
folder as a package named ``depth_ros_at_<commit>`` (their ``depth_ros.`` imports rewritten to
it), so both versions import side by side. It needs the repository's history (a clone, not an
export); :class:`BaselineUnavailable` says so otherwise.
"""
import atexit
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the package needs from the tree: the core and the helpers it imports.
PATHS = ('depth_ros/core', 'depth_ros/util.py')
_IMPORT = re.compile(r'\bdepth_ros\.(core|util)\b')


class BaselineUnavailable(RuntimeError):
    """The commit cannot be read (no git, a shallow clone, an unknown commit)."""


def _git(*args):
    try:
        return subprocess.run(('git',) + args, cwd=ROOT, check=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=120).stdout
    except subprocess.TimeoutExpired:
        raise BaselineUnavailable('git {} did not finish within 120 s'.format(
            ' '.join(args))) from None
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, 'stderr', b'') or b''
        raise BaselineUnavailable('git {} failed: {}'.format(
            ' '.join(args), detail.decode(errors='replace').strip() or exc)) from None


def load_core(commit):
    """Return a namespace with the core modules of ``commit`` (alignment, pointcloud, ...)."""
    full = _git('rev-parse', '--verify', '{}^{{commit}}'.format(commit)).decode().strip()
    alias = 'depth_ros_at_' + full[:10]
    if alias + '.core' not in sys.modules:
        top = tempfile.mkdtemp(prefix='depth_ros_baseline_')
        atexit.register(shutil.rmtree, top, True)
        files = _git('ls-tree', '-r', '--name-only', full, '--', *PATHS).decode().split()
        if not files:
            raise BaselineUnavailable('commit {} has no {}'.format(commit, ', '.join(PATHS)))
        for name in files:
            if not name.endswith('.py'):
                continue
            text = _git('show', '{}:{}'.format(full, name)).decode()
            dest = os.path.join(top, alias, os.path.relpath(name, 'depth_ros'))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, 'w') as f:
                f.write(_IMPORT.sub(alias + r'.\1', text))
        with open(os.path.join(top, alias, '__init__.py'), 'w') as f:
            f.write('"""depth_ros core at commit {}."""\n'.format(full))
        sys.path.insert(0, top)
        importlib.invalidate_caches()
    core = importlib.import_module(alias + '.core')
    namespace = types.SimpleNamespace(commit=full)
    for name in sorted(os.listdir(os.path.dirname(core.__file__))):
        if name.endswith('.py') and name != '__init__.py':
            setattr(namespace, name[:-3], importlib.import_module(
                '{}.core.{}'.format(alias, name[:-3])))
    return namespace
