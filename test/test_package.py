"""The package as ROS and pip see it: package.xml, colcon install layout, import hygiene, lint."""
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXECUTABLES = ('depth-ros', 'zed_node', 'depth_node', 'alignment_node', 'marigold_node',
               'composed_nodes')
IGNORE = shutil.ignore_patterns('.venv*', '.git', 'build', 'install', 'log', 'out',
                                '__pycache__', '*.egg-info', '.pytest_cache', '.whl',
                                '*.onnx', '*.engine', '*.pth', '*.safetensors')


def _package_xml():
    return ET.parse(os.path.join(ROOT, 'package.xml')).getroot()


def test_package_xml_is_format_3_ament_python():
    root = _package_xml()
    assert root.get('format') == '3', 'expected format 3, received {}'.format(root.get('format'))
    assert root.findtext('name') == 'depth_ros'
    assert root.findtext('export/build_type') == 'ament_python'


def test_package_xml_declares_the_runtime_and_test_dependencies():
    root = _package_xml()
    exec_deps = {e.text for e in root.findall('exec_depend')}
    test_deps = {e.text for e in root.findall('test_depend')}
    want_exec = {'rclpy', 'sensor_msgs', 'std_msgs', 'std_srvs', 'diagnostic_msgs', 'cv_bridge',
                 'launch', 'launch_ros', 'python3-numpy', 'python3-opencv'}
    want_test = {'launch_pytest', 'python3-pytest', 'ament_flake8', 'ament_pep257'}
    assert want_exec <= exec_deps, 'missing exec_depend: {}'.format(sorted(want_exec - exec_deps))
    assert want_test <= test_deps, 'missing test_depend: {}'.format(sorted(want_test - test_deps))
    # Every linter declared has its test (ament_copyright had none: the files carry no header).
    linters = {d for d in test_deps if d.startswith('ament_')}
    tests = {name[len('test_'):-len('.py')] for name in os.listdir(os.path.join(ROOT, 'test'))}
    assert {d[len('ament_'):] for d in linters} <= tests, (linters, sorted(tests))


def test_setup_cfg_installs_scripts_where_ros2_run_looks():
    with open(os.path.join(ROOT, 'setup.cfg')) as f:
        text = f.read()
    assert 'script_dir=$base/lib/depth_ros' in text
    assert 'install_scripts=$base/lib/depth_ros' in text


def test_core_and_nodes_core_import_neither_ros_nor_heavy_frameworks():
    # The robot's core must import with numpy and OpenCV alone; the public API is lazy. The
    # nodes' ROS-free logic (nodes_core) imports no rclpy either: only depth_ros.ros does.
    import glob
    modules = sorted('depth_ros.{}.{}'.format(package, os.path.basename(path)[:-3])
                     for package in ('core', 'nodes_core')
                     for path in glob.glob(os.path.join(ROOT, 'depth_ros', package, '*.py')))
    assert 'depth_ros.nodes_core.workers' in modules and 'depth_ros.core.pairing' in modules
    code = (
        'import sys, depth_ros, importlib\n'
        'from depth_ros import PinholeCamera, MetricAligner, depth_to_cloud, colorize\n'
        'for name in {!r}: importlib.import_module(name)\n'.format(modules) +
        'heavy = [m for m in ("rclpy", "torch", "tensorrt", "pycuda", "pyzed", "onnxruntime",'
        ' "transformers", "diffusers") if m in sys.modules]\n'
        'print(",".join(heavy))\n')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '', 'core or nodes_core pulled in: ' + out.stdout.strip()


def test_cli_help_lists_every_command():
    out = subprocess.run([sys.executable, '-m', 'depth_ros.cli', '--help'], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for command in ('demo', 'fuse', 'model', 'bench', 'eval', 'process-bag'):
        assert command in out.stdout, 'expected {!r} in --help, received:\n{}'.format(
            command, out.stdout)


def test_version(capsys):
    # `depth-ros --version` said "the following arguments are required: COMMAND".
    import depth_ros
    from depth_ros.cli import main
    with pytest.raises(SystemExit) as done:
        main(['--version'])
    assert done.value.code == 0 and \
        capsys.readouterr().out == 'depth-ros {}\n'.format(depth_ros.__version__)


def test_debug_is_taken_after_the_command_too(tmp_path):
    # `depth-ros eval ... --debug` said "unrecognized arguments: --debug": only
    # `depth-ros --debug eval ...` was taken.
    from depth_ros.cli import build_parser, main
    parser = build_parser()
    debug = [parser.parse_args(argv).debug for argv in (
        ['eval'], ['--debug', 'eval'], ['eval', '--debug'], ['model', 'setup'],
        ['model', 'setup', '--debug'], ['--debug', 'model', 'setup'])]
    assert debug == [False, True, True, False, True, True], debug
    argv = ['eval', '--dataset', 'middlebury', '--out', str(tmp_path)]
    assert main(argv) == 2
    with pytest.raises(ValueError, match='needs `--model`'):   # the traceback, as documented
        main(argv + ['--debug'])


def test_every_commands_help_gives_its_defaults():
    # `depth-ros bench --help` said "--frames FRAMES  timed frames" with no default (nor did
    # demo, fuse, eval and process-bag), where the model commands showed theirs.
    import argparse
    import re
    from depth_ros.cli import build_parser
    parser = build_parser()
    commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)][0]
    checked = 0
    for name, sub in commands.choices.items():
        nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        for command in nested[0].choices.values() if nested else [sub]:
            text = re.sub(r'\s+', ' ', command.format_help())
            for action in command._actions:
                flag = isinstance(action, (argparse._StoreTrueAction,
                                           argparse._StoreFalseAction))
                if flag or action.help == argparse.SUPPRESS or \
                        action.default in (None, argparse.SUPPRESS) or \
                        'default' in (action.help or ''):
                    continue
                # argparse shows no default for an option without help (--backend had none).
                assert action.help, '{} {}: no help, so no default in --help'.format(
                    command.prog, action.option_strings)
                helped = re.sub(r'\s+', ' ', action.help)
                assert '{} (default: {})'.format(helped, action.default) in text, \
                    '{} {}: no default in --help:\n{}'.format(
                        command.prog, action.option_strings, command.format_help())
                checked += 1
    assert checked >= 20, checked


def test_cli_ctrl_c_while_the_commands_import_is_quiet(monkeypatch, capsys):
    # The first 0.2 s of `depth-ros ...` build the parser, importing every command: a Ctrl-C
    # then was a KeyboardInterrupt traceback (exit -2); later it is exit 130, quiet.
    from depth_ros import cli
    from depth_ros.commands import model

    def interrupted(subparsers):
        raise KeyboardInterrupt
    monkeypatch.setattr(model, 'register', interrupted)
    try:
        code = cli.main(['demo'])
    except KeyboardInterrupt:
        pytest.fail('KeyboardInterrupt escaped depth-ros main (a traceback, exit -2)')
    assert code == 130 and capsys.readouterr() == ('', '')


def test_cli_user_errors_are_one_line_also_through_python_m(tmp_path):
    # `make demo` runs `python -m depth_ros.cli`: user errors (here a CommandError raised by
    # the fuse command) must stay one line, exit 2.
    code = ('import cv2, numpy as np, sys; d = sys.argv[1]; '
            'cv2.imwrite(d + "/x.png", np.zeros((4, 4, 3), np.uint8)); '
            'np.save(d + "/r.npy", np.ones((3, 3), np.float32)); '
            'np.save(d + "/d.npy", np.ones((3, 3), np.float32))')
    subprocess.run([sys.executable, '-c', code, str(tmp_path)], check=True, timeout=60)
    out = subprocess.run([sys.executable, '-m', 'depth_ros.cli', 'fuse', '--image',
                          str(tmp_path / 'x.png'), '--relative', str(tmp_path / 'r.npy'),
                          '--stereo-depth', str(tmp_path / 'd.npy'), '--intrinsics',
                          '1,1,1,1', '--out', str(tmp_path / 'o')], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert 'Traceback' not in out.stderr, out.stderr
    assert out.stderr.strip() == ('depth-ros fuse: error: --image is 4x4 but --stereo-depth is '
                                  '3x3 (W x H); they must match'), out.stderr


@pytest.mark.slow
def test_colcon_build_installs_executables_and_share_files(tmp_path):
    colcon = shutil.which('colcon') or os.path.join(os.path.dirname(sys.executable), 'colcon')
    if not os.path.exists(colcon):
        pytest.skip('colcon is not installed (pip install colcon-common-extensions)')
    src = tmp_path / 'ws' / 'src' / 'depth_ros'
    shutil.copytree(ROOT, str(src), ignore=IGNORE)
    ws = tmp_path / 'ws'
    out = subprocess.run([colcon, 'build', '--base-paths', 'src', '--event-handlers',
                          'console_cohesion-'], cwd=str(ws), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, 'colcon build failed:\n{}\n{}'.format(out.stdout, out.stderr)
    prefix = ws / 'install' / 'depth_ros'
    for exe in EXECUTABLES:
        path = prefix / 'lib' / 'depth_ros' / exe
        assert path.is_file(), 'expected executable {}, lib/depth_ros has {}'.format(
            path, sorted(os.listdir(str(prefix / 'lib' / 'depth_ros'))))
        assert os.access(str(path), os.X_OK)
    share = prefix / 'share' / 'depth_ros'
    for rel in ('package.xml', 'launch/zed_depth.launch.py', 'config/zed_depth.yaml',
                'rviz/zed_depth.rviz', 'models/README.md'):
        assert (share / rel).is_file(), 'expected {} in {}'.format(rel, share)
    index = prefix / 'share' / 'ament_index' / 'resource_index' / 'packages' / 'depth_ros'
    assert index.is_file(), 'the ament resource marker is missing: ros2 pkg cannot find us'
    # The installed entry point runs from the install space, not from the source tree.
    site = list(prefix.glob('lib/python3*/site-packages'))
    assert site, 'no site-packages under {}'.format(prefix)
    env = dict(os.environ, PYTHONPATH=str(site[0]))
    run = subprocess.run([str(prefix / 'lib' / 'depth_ros' / 'depth-ros'), '--help'],
                         cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert 'process-bag' in run.stdout


def test_everything_under_depth_ros_compiles_on_python38():
    roots = [os.popen('pyenv root 2>/dev/null').read().strip(),
             os.path.expanduser('~/.pyenv'), '/root/.pyenv']
    candidates = [os.path.join(r, 'versions', '3.8.18', 'bin', 'python3.8') for r in roots if r]
    candidates += [shutil.which('python3.8') or '', '/usr/bin/python3.8']
    py38 = next((c for c in candidates if os.path.isfile(c)), None)
    if sys.version_info[:2] == (3, 8):
        py38 = sys.executable
    if py38 is None:
        pytest.skip('no Python 3.8 interpreter on this machine')
    # compile() with the 3.8 grammar; the PYTHONPYCACHEPREFIX keeps the tree clean.
    out = subprocess.run([py38, '-m', 'compileall', '-q', 'depth_ros'], cwd=ROOT,
                         env=dict(os.environ, PYTHONPYCACHEPREFIX=os.path.join(
                             ROOT, '.pytest_cache', 'py38')),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, 'Python 3.8 cannot compile:\n' + out.stdout + out.stderr
