"""
Parameters: one spec each, and the checks rclpy does not make for us.

A node lists its parameters as :class:`Param` specs. ``depth_ros.ros.runtime`` declares each one
with a ParameterDescriptor (description, range, read-only), and rclpy enforces type, range and
read-only, at start-up and on every change. Here is what a descriptor cannot say:

- the allowed values of a string parameter (:func:`choice_error`);
- a runtime change of the wrong type in one line naming the parameter (:func:`type_error`:
  rclpy says ``Wrong parameter type, expected '3' got '2'`` on Python 3.11, without the name);
- the names given to a node (``--params-file``, ``-p``) that it does not declare: rclpy ignores
  them without a word, so ``-p cloud_strid:=1`` would change nothing (:func:`given_names`,
  :func:`unknown_lines`); and a runtime change of such a name (:func:`undeclared_error`: rclpy
  says ``('Invalid access to undeclared parameter(s)', [])``);
- a ``--params-file`` that is missing or not YAML, in one line instead of rcl's 20-line error
  (:func:`params_file_error`).
"""
from __future__ import annotations

import difflib
import os
import re
from typing import Callable, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from depth_ros.util import describe_error


class ConfigError(ValueError):
    """Bad configuration: the node refuses to start. The message names the parameter."""


class StartupError(RuntimeError):
    """A resource the node needs (model, camera driver) could not be set up."""


class Param(NamedTuple):
    """
    One parameter: name, default (its type is the parameter's type), description.

    ``choices``: allowed values (strings); ``low``/``high``: inclusive numeric range (rclpy
    enforces it through the descriptor); ``read_only``: fixed after start-up (topics, backend,
    model path); ``zero_is_off``: 0 stands for None (the feature off) in what the value
    configures (an aligner option that takes None).
    """

    name: str
    default: object
    description: str
    choices: Optional[Sequence[str]] = None
    low: Optional[float] = None
    high: Optional[float] = None
    read_only: bool = False
    zero_is_off: bool = False


def choice_error(spec: Param, value) -> Optional[str]:
    """Return why ``value`` is not one of ``spec.choices`` (None when it is, or free)."""
    if spec.choices and value not in spec.choices:
        return 'parameter `{}` must be one of {}, got {!r}'.format(
            spec.name, '|'.join(spec.choices), value)
    return None


_TYPE_NAMES = ((bool, 'a boolean (true or false)'), (int, 'an integer'), (float, 'a double'),
               (str, 'a string'))


def _type_name(value) -> str:
    for kind, name in _TYPE_NAMES:
        if type(value) is kind:
            return name
    return 'a {}'.format(type(value).__name__)


def type_error(spec: Param, value) -> str:
    """
    Say that ``value`` is not of ``spec``'s type, naming the parameter, and how to write it.

    Starts with rclpy's own 'Wrong parameter type' (rclpy tells a type error by that prefix).
    """
    hint = ''
    if type(spec.default) is float and type(value) is int:
        hint = ' (write {}.0)'.format(value)
    elif type(spec.default) is int and type(value) is float and value.is_integer():
        hint = ' (write {})'.format(int(value))
    return 'Wrong parameter type: `{}` is {}, got {} {!r}{}'.format(
        spec.name, _type_name(spec.default), _type_name(value), value, hint)


# rclpy's refusal of an integer for a double at declaration (Humble and Kilted alike).
_INT_FOR_DOUBLE = re.compile(r"to '(-?[0-9]+)' of type 'INTEGER', expecting type 'DOUBLE'")


def start_up_type_error(text: str) -> str:
    """
    Return rclpy's start-up type error with how to write the value, where it is an integer.

    ``max_depth: 20`` in a parameters file (or ``-p max_depth:=20``) is an integer, and a
    double parameter refuses it: ``... to '20' of type 'INTEGER', expecting type 'DOUBLE'``
    gets ``(write 20.0)``, as the same mistake does at runtime (:func:`type_error`).
    """
    found = _INT_FOR_DOUBLE.search(text)
    return text + (' (write {}.0)'.format(found.group(1)) if found else '')


# ------------------------------------------------------------------- shared by the nodes
RELIABILITY = Param('reliability', 'best_effort', 'QoS reliability of image/cloud topics: '
                    'best_effort (sensor data, default) or reliable (RViz on Humble subscribes '
                    'reliable)', choices=('best_effort', 'reliable'), read_only=True)
LOG_THROTTLE = Param('log_throttle_s', 2.0, 'bad-frame errors of one kind are logged at most '
                     'once per this many seconds', low=0.0, high=3600.0)
DIAGNOSTICS_PERIOD = Param('diagnostics_period_s', 1.0, 'seconds between two /diagnostics '
                           'messages of this node', low=0.05, high=60.0, read_only=True)
STAMP_RESET = Param('stamp_reset_s', 1.0, 'a stamp older than the previous of its stream by '
                    'more than this is a source restart (bag loop, sim-time reset): accepted, '
                    'with a warning, and the node starts over; smaller steps back are dropped '
                    'as out-of-order', low=0.0, high=1e6)


def qos_depth(default: int) -> Param:
    """Return the QoS history depth parameter with this node's default."""
    return Param('qos_depth', default, 'QoS history depth of image/cloud topics (small: the '
                 'graph works on the newest frame)', low=1, high=100, read_only=True)


# Parameters of earlier versions, with what replaces them (reported when a params file has them).
REMOVED = {
    'buffer_size': 'removed in 0.2: pairing waits by age (`pairing_window_s`) under a memory '
                   'cap (`pairing_max_mb`)',
}


# --------------------------------------------------------------- what the node was given
def _ros_options(args: Sequence[str]) -> Iterator[Tuple[str, str]]:
    """Yield (option, value) of the ``--params-file`` and ``-p`` of ``--ros-args`` sections."""
    in_ros = False
    for i, arg in enumerate(args):
        if arg == '--ros-args':
            in_ros = True
        elif arg == '--':
            in_ros = False
        elif in_ros and arg in ('--params-file', '-p', '--param') and i + 1 < len(args):
            yield arg, args[i + 1]


def stray_arguments(args: Sequence[str]) -> List[str]:
    """
    Return the arguments of ``args`` (``sys.argv``) outside its ``--ros-args ... --`` sections.

    rclpy hands them to the program, and a node has none: ``alignment_node cloud_stride:=4``
    (``--ros-args -p`` forgotten) ran on the defaults in silence, and ``depth_node --help``
    loaded the model.
    """
    out, in_ros = [], False
    for arg in list(args)[1:]:
        if arg == '--ros-args':
            in_ros = True
        elif arg == '--':
            in_ros = False
        elif not in_ros:
            out.append(arg)
    return out


def node_usage(name: str, specs: Sequence[Param] = ()) -> str:
    """Return a node's ``--help``: how to give it parameters, and each with its default."""
    lines = ['usage: {} [--ros-args [-p NAME:=VALUE]... [--params-file FILE]... '
             '[-r FROM:=TO]... [--log-level LEVEL] --]'.format(name),
             '',
             'A ROS 2 node of depth_ros; `ros2 launch depth_ros zed_depth.launch.py` starts it '
             '(docs/ros.md). Its parameters (default, meaning):']
    lines += ['  {} ({!r}{}): {}'.format(
        p.name, p.default, ', read-only' if p.read_only else '', p.description) for p in specs]
    return '\n'.join(lines) + '\n'


def _load_yaml(path: str):
    import yaml
    with open(path) as f:
        return yaml.safe_load(f)


def params_file_error(args: Sequence[str]) -> Optional[str]:
    """
    Return what is wrong with a ``--params-file`` of ``args`` (None when they all read).

    rcl would refuse them too, but with a 20-line error and a traceback; this names the file
    and the problem in one line before rcl sees it.
    """
    import yaml
    for option, path in _ros_options(args):
        if option != '--params-file':
            continue
        if not os.path.isfile(path):
            return '--params-file {}: no such file'.format(path)
        try:
            data = _load_yaml(path)
        except (OSError, yaml.YAMLError) as exc:
            return '--params-file {}: not valid YAML: {}'.format(
                path, describe_error(exc).replace('\n', ' '))
        if data is not None and not isinstance(data, dict):
            return '--params-file {}: expected node sections (`/**/node: ros__parameters: ' \
                '...`), got a {}'.format(path, type(data).__name__)
    return None


def _flatten(params: dict, prefix: str = '') -> Iterator[str]:
    for key, value in params.items():
        if isinstance(value, dict):
            yield from _flatten(value, '{}{}.'.format(prefix, key))
        else:
            yield prefix + str(key)


def _sections(data: dict, path: Tuple[str, ...] = ()) -> Iterator[Tuple[str, dict]]:
    """Yield (node key, its ros__parameters) of a params file, in the file's order."""
    for key, value in data.items():
        if not isinstance(value, dict):
            continue
        if key == 'ros__parameters':
            yield '/'.join(path), value
        else:
            yield from _sections(value, path + (str(key),))


def _yaml_names(data: dict) -> Iterator[Tuple[str, str]]:
    """Yield (node key, parameter name) of a params file (nested node keys are joined)."""
    for key, params in _sections(data):
        for name in _flatten(params):
            yield key, name


def node_key_matches(key: str, node_fqn: str) -> bool:
    """
    Tell whether a params-file node key (or a ``-p node:name`` prefix) applies to ``node_fqn``.

    As rcl resolves them: a leading ``/`` is implied, ``/**`` stands for any number of
    namespace levels (none included) and ``*`` for one name.
    """
    key = key if key.startswith('/') else '/' + key
    pattern = ''.join('(/[^/]+)*' if part == '/**' else '[^/]+' if part == '*' else
                      re.escape(part) for part in re.split(r'(/\*\*|\*)', key))
    return re.fullmatch(pattern, node_fqn) is not None


def file_values(path: str, node_fqn: str, names: Iterable[str]) -> dict:
    """
    Return the values a params file gives the node ``node_fqn`` for ``names`` (those it sets).

    Every section whose node key matches, in the file's order, a later one overriding an
    earlier one. A file that does not read gives nothing (:func:`params_file_error` says why).
    """
    import yaml
    try:
        data = _load_yaml(path)
    except (OSError, yaml.YAMLError):
        return {}
    out = {}
    if isinstance(data, dict):
        for key, params in _sections(data):
            if node_key_matches(key, node_fqn):
                out.update((n, params[n]) for n in names if n in params)
    return out


def keys_missing_namespace(path: str, node_fqns: Sequence[str]) -> List[Tuple[str, str]]:
    """
    Return (key, node) for each params-file section keyed by a part of a node's full name.

    rcl reads a node key as a full name from the root: ``zed_node:`` is ``/zed_node`` and
    never reaches ``/zed/zed_node``, whose parameters then stay at their defaults in silence;
    under a namespace pushed by an including launch file (``/robot1/zed/zed_node``),
    ``/zed/zed_node:`` misses it too. Only keys without a wildcard that end a name of
    ``node_fqns`` on a namespace boundary, without being it, and match none of them; other
    nodes' sections are not ours to judge. A file that does not read gives nothing
    (:func:`params_file_error` says why).
    """
    import yaml
    try:
        data = _load_yaml(path)
    except (OSError, yaml.YAMLError):
        return []
    out = []
    for key, _ in _sections(data) if isinstance(data, dict) else ():
        bare = key.strip('/')
        if '*' in bare or any(node_key_matches(key, f) for f in node_fqns):
            continue
        out += [(key, fqn) for fqn in node_fqns if fqn.endswith('/' + bare)][:1]
    return out


def given_names(args: Sequence[str], node_fqn: str) -> List[str]:
    """
    Return the parameter names that ``args`` give the node ``node_fqn``, sorted.

    ``--params-file`` sections whose node key matches, and ``-p [node:]name:=value`` rules. A
    file that does not read gives nothing here (:func:`params_file_error` reports it).
    """
    names = set()
    for option, value in _ros_options(args):
        if option == '--params-file':
            try:
                data = _load_yaml(value)
            except Exception:  # noqa: B902 - reported by params_file_error, not here
                continue
            pairs = _yaml_names(data) if isinstance(data, dict) else ()
        elif ':=' in value:
            node, _, name = value.split(':=', 1)[0].rpartition(':')
            pairs = [(node or '/**', name)]
        else:
            continue
        names.update(name for key, name in pairs if node_key_matches(key, node_fqn))
    return sorted(names)


def unknown_lines(given: Iterable[str], is_declared: Callable[[str], bool],
                  own: Sequence[str]) -> List[str]:
    """
    One warning per given name that the node does not declare, with a hint.

    :param is_declared: the node's ``has_parameter`` (rclpy's own, such as use_sim_time, count).
    :param own: the node's parameter names, for "did you mean".
    """
    return ['unknown parameter `{}` ignored: {}'.format(name, _hint(name, own)) for name in given
            if not is_declared(name) and not name.startswith('qos_overrides.')]


def _hint(name: str, own: Sequence[str]) -> str:
    hint = REMOVED.get(name)
    if hint is None:
        close = difflib.get_close_matches(name, sorted(own), n=1)
        hint = 'did you mean `{}`?'.format(close[0]) if close else 'not a parameter of ' \
            'this node (`ros2 param list` shows them)'
    return hint


def undeclared_error(names: Sequence[str], node: str, own: Sequence[str]) -> str:
    """
    Why a runtime change of parameters the node does not declare is refused, with a hint.

    rclpy's own reason (``ros2 param set /alignment_node cloud_strid 4``) was ``('Invalid access
    to undeclared parameter(s)', [])``: a tuple's text, and the list of names always empty (rclpy
    3.3 to 9.1 hand it a generator that ``any()`` has already consumed).

    :param node: the node's fully qualified name.
    :param own: the node's parameter names, for "did you mean".
    """
    return '; '.join('parameter `{}` is not declared by {}: {}'.format(
        name, node, _hint(name, own)) for name in names)
