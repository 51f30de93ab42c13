"""
The ROS install path on JetPack 5, with the real setuptools 45.2 wrapper.

JetPack 5.1 is Ubuntu 20.04: Python 3.8, setuptools 45.2, numpy 1.17.4 from apt (with
egg-info metadata) and NVIDIA's OpenCV from apt (a ``cv2`` module with no pip metadata). colcon
installs an ament_python package with ``setup.py ... install --single-version-externally-managed``
and setuptools < 47 writes console scripts that resolve every ``install_requires`` entry through
pkg_resources before the module loads: a requirement without metadata ends the executable with
``pkg_resources.DistributionNotFound`` before any of our code runs.

The test builds that interpreter once (a Python 3.8 venv, cached with a stamp in
``$XDG_CACHE_HOME/depth_ros`` (``~/.cache/depth_ros``) or ``$DEPTH_ROS_JETPACK_VENV``),
installs the package as colcon does, and runs the six executables. The nodes must get as far as
their ``main()``, where the missing rclpy (no ROS in the venv) stops them; ``depth-ros --help``
must succeed. It skips, saying why, without a Python 3.8 or when pip cannot reach the registry.
"""
from __future__ import annotations

import glob
import json
import os
import runpy
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXECUTABLES = ('depth-ros', 'zed_node', 'depth_node', 'alignment_node', 'marigold_node',
               'composed_nodes')
NODES = EXECUTABLES[1:]
# The robot's versions. OpenCV is installed from pip only to get a real cv2 and then loses its
# metadata, which makes it what JetPack's apt OpenCV is to pkg_resources.
JETPACK = ('setuptools==45.2.0', 'numpy==1.17.4', 'opencv-python-headless==4.5.4.60')
NO_METADATA = ('opencv_python_headless',)
# pip names that the apt packages of package.xml's rosdep keys provide with metadata on
# Ubuntu 20.04 (dh_python3 ships an .egg-info): the only names install_requires may hold.
APT_WITH_METADATA = {'setuptools', 'numpy'}
ROSDEP_KEYS = {'numpy': 'python3-numpy', 'opencv-python-headless': 'python3-opencv',
               'PyYAML': 'python3-yaml', 'tqdm': 'python3-tqdm'}
NETWORK_ERRORS = ('NewConnectionError', 'Max retries exceeded', 'Temporary failure in name',
                  'Network is unreachable', 'ProxyError', 'ConnectionError', 'timed out',
                  'Could not find a version that satisfies', 'No matching distribution')


def _setup_kwargs():
    """Return the keyword arguments that setup.py passes to setup(), without setuptools."""
    import setuptools

    captured = {}
    saved, cwd = setuptools.setup, os.getcwd()
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    try:
        os.chdir(ROOT)
        runpy.run_path(os.path.join(ROOT, 'setup.py'), run_name='__main__')
    finally:
        setuptools.setup = saved
        os.chdir(cwd)
    return captured


def _name(requirement: str) -> str:
    for sep in ';<>=!~[ ':
        requirement = requirement.split(sep)[0]
    return requirement


def test_install_requires_holds_only_what_apt_provides_with_metadata():
    kwargs = _setup_kwargs()
    names = {_name(r) for r in kwargs['install_requires']}
    assert names <= APT_WITH_METADATA, \
        'install_requires {} has names without apt metadata: {}'.format(
            sorted(names), sorted(names - APT_WITH_METADATA))
    root = ET.parse(os.path.join(ROOT, 'package.xml')).getroot()
    exec_deps = {e.text for e in root.findall('exec_depend')}
    base = kwargs['extras_require']['base']
    for requirement in base:
        key = ROSDEP_KEYS.get(_name(requirement))
        assert key is not None, 'no rosdep key known for {!r}'.format(requirement)
        assert key in exec_deps, '{!r} is in the base extra but package.xml lacks {}'.format(
            requirement, key)
    # The desktop extras pull the base; the ones used on a Jetson must not (a pip OpenCV in
    # ~/.local would shadow JetPack's CUDA/GStreamer build).
    extras = kwargs['extras_require']
    for extra in ('ros', 'tools', 'export', 'marigold', 'dev'):
        missing = set(base) - set(extras[extra])
        assert not missing, 'extra {!r} lacks {}'.format(extra, sorted(missing))
    for extra in ('onnx', 'tensorrt', 'bag'):
        opencv = [r for r in extras[extra] if _name(r).startswith('opencv')]
        assert not opencv, 'extra {!r} would install {} on a Jetson'.format(extra, opencv)


def _python38():
    if sys.version_info[:2] == (3, 8):
        # The base interpreter, not this venv: the new venv must not inherit its packages.
        names = [os.path.join(sys.base_prefix, 'bin', 'python3.8')]
    else:
        names = []
    roots = [os.environ.get('PYENV_ROOT', ''), os.path.expanduser('~/.pyenv'), '/root/.pyenv']
    for root in roots:
        if root:
            names += sorted(glob.glob(os.path.join(root, 'versions', '3.8*', 'bin', 'python3.8')))
    names += [os.environ.get('PY38', ''), shutil.which('python3.8') or '']
    return next((n for n in names if n and os.path.isfile(n)), None)


def _run(cmd, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def _build_venv(python, path):
    """Build a venv of JETPACK's packages, OpenCV without metadata; skip if pip is offline."""
    tmp = path + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    out = _run([python, '-m', 'venv', tmp], timeout=120)
    assert out.returncode == 0, 'venv failed:\n' + out.stderr
    pip = [os.path.join(tmp, 'bin', 'python'), '-m', 'pip', 'install', '-q', '--retries', '1',
           '--timeout', '20', '--disable-pip-version-check']
    out = _run(pip + list(JETPACK), timeout=600)
    if out.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        text = out.stdout + out.stderr
        if any(marker in text for marker in NETWORK_ERRORS):
            pytest.skip('pip could not install {} (no package registry?): {}'.format(
                ' '.join(JETPACK), text.strip().splitlines()[-1]))
        pytest.fail('pip install {} failed:\n{}'.format(' '.join(JETPACK), text))
    site = glob.glob(os.path.join(tmp, 'lib', 'python3.8', 'site-packages'))[0]
    for name in NO_METADATA:
        for info in glob.glob(os.path.join(site, name + '-*.dist-info')):
            shutil.rmtree(info)
    shutil.rmtree(path, ignore_errors=True)
    # A venv locates itself from bin/python (a symlink); only bin/pip & co. name the .tmp path,
    # and they are not used.
    os.rename(tmp, path)


@pytest.fixture(scope='module')
def jetpack_python():
    """Return bin/python of the cached JetPack-like venv (built once, outside the tree)."""
    python = _python38()
    if python is None:
        pytest.skip('no Python 3.8 interpreter found (pyenv 3.8.x, $PY38 or python3.8 on PATH)')
    cache = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    default = os.path.join(cache, 'depth_ros', 'test-jetpack5-py38')
    path = os.environ.get('DEPTH_ROS_JETPACK_VENV') or default
    stamp = os.path.join(path, 'depth_ros.stamp')
    want = {'python': os.path.realpath(python), 'packages': list(JETPACK),
            'no_metadata': list(NO_METADATA)}
    try:
        with open(stamp) as f:
            fresh = json.load(f) == want
    except (OSError, ValueError):
        fresh = False
    if not fresh:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _build_venv(python, path)
        with open(stamp, 'w') as f:
            json.dump(want, f)
    bin_python = os.path.join(path, 'bin', 'python')
    # The model is right: setuptools 45.2, numpy with metadata, cv2 importable without any.
    check = ('import setuptools, numpy, cv2, pkg_resources\n'
             'print(setuptools.__version__, numpy.__version__, cv2.__version__)\n'
             'try:\n'
             '    pkg_resources.get_distribution("opencv-python-headless")\n'
             '    print("has-metadata")\n'
             'except pkg_resources.DistributionNotFound:\n'
             '    print("no-metadata")\n')
    out = _run([bin_python, '-c', check], timeout=60, env=_clean_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ['45.2.0', '1.17.4', '4.5.4', 'no-metadata'], out.stdout
    return bin_python


def _clean_env(pythonpath=None):
    env = {k: v for k, v in os.environ.items()
           if k not in ('PYTHONPATH', 'PYTHONHOME', 'VIRTUAL_ENV', 'PYTHONSTARTUP')}
    env['PYTHONNOUSERSITE'] = '1'
    if pythonpath:
        env['PYTHONPATH'] = pythonpath
    return env


@pytest.fixture(scope='module')
def colcon_install(jetpack_python, tmp_path_factory):
    """Install the package as colcon's ament_python build does; (prefix, site-packages)."""
    base = str(tmp_path_factory.mktemp('jetpack_build'))
    prefix = os.path.join(base, 'install')
    build = os.path.join(base, 'build')
    os.makedirs(build)
    # colcon-core's PythonBuildTask command line; it points the prefix at the install space
    # with a sitecustomize override, --prefix does the same here.
    cmd = [jetpack_python, 'setup.py', 'egg_info', '--egg-base', build,
           'build', '--build-base', os.path.join(build, 'build'),
           'install', '--record', os.path.join(build, 'install.log'),
           '--install-scripts', '$base/lib/depth_ros', '--single-version-externally-managed',
           '--prefix', prefix, 'install_data']
    out = _run(cmd, cwd=ROOT, timeout=300, env=_clean_env())
    assert out.returncode == 0, 'setup.py install failed:\n{}\n{}'.format(out.stdout, out.stderr)
    site = glob.glob(os.path.join(prefix, 'lib', 'python3.8', 'site-packages'))
    assert site, 'no site-packages under {}'.format(prefix)
    return prefix, site[0]


def _start(prefix, site, exe, *args):
    path = os.path.join(prefix, 'lib', 'depth_ros', exe)
    return _run([path] + list(args), cwd=prefix, timeout=120, env=_clean_env(site))


def test_wrapper_is_the_pkg_resources_one(colcon_install):
    # If a future setuptools pin wrote another wrapper, the checks below would prove nothing.
    prefix, _ = colcon_install
    with open(os.path.join(prefix, 'lib', 'depth_ros', 'zed_node')) as f:
        text = f.read()
    assert 'from pkg_resources import load_entry_point' in text, text
    assert "__requires__ = 'depth-ros==0.1.0'" in text, text


def test_depth_ros_help_runs_on_jetpack5(colcon_install):
    prefix, site = colcon_install
    out = _start(prefix, site, 'depth-ros', '--help')
    assert out.returncode == 0, 'expected exit 0, received {}:\n{}'.format(out.returncode,
                                                                           out.stderr)
    assert 'process-bag' in out.stdout and 'model' in out.stdout, out.stdout


@pytest.mark.parametrize('exe', NODES)
def test_node_gets_past_the_wrapper_to_its_main_on_jetpack5(colcon_install, exe):
    prefix, site = colcon_install
    out = _start(prefix, site, exe)
    assert 'DistributionNotFound' not in out.stderr, out.stderr
    last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ''
    # No ROS in this venv: the node's main() reaches `import rclpy` and stops there.
    assert last == "ModuleNotFoundError: No module named 'rclpy'", \
        'expected the missing rclpy to stop {}, received:\n{}'.format(exe, out.stderr)
    runtime = os.path.join(site, 'depth_ros', 'ros', 'runtime.py')
    assert 'File "{}"'.format(runtime) in out.stderr, \
        'expected the installed {} to run, received:\n{}'.format(runtime, out.stderr)


def test_a_requirement_without_metadata_is_what_stops_the_wrapper(colcon_install, tmp_path):
    # The check can fail: with the old install_requires (opencv-python-headless, which has no
    # metadata here as on JetPack) the same wrapper ends before the module loads.
    prefix, site = colcon_install
    copy = str(tmp_path / 'install')
    shutil.copytree(prefix, copy, symlinks=True)
    copy_site = site.replace(prefix, copy)
    requires = glob.glob(os.path.join(copy_site, 'depth_ros-*.egg-info', 'requires.txt'))[0]
    with open(requires) as f:
        text = f.read()
    with open(requires, 'w') as f:
        f.write('opencv-python-headless\n' + text)
    out = _start(copy, copy_site, 'zed_node')
    want = ("pkg_resources.DistributionNotFound: The 'opencv-python-headless' distribution was "
            'not found and is required by depth-ros')
    assert out.stderr.strip().splitlines()[-1] == want, \
        'expected {!r}, received:\n{}'.format(want, out.stderr)
