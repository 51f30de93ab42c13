"""
Parameters declared once, with descriptors, validated at start-up and on every change.

A node lists its parameters as :class:`Param` specs. :func:`declare_params` declares each one
with a ParameterDescriptor (description, range, read-only), checks the values from the params
file and the command line, and raises :class:`ConfigError` naming the parameter and its value.
:func:`on_set_validator` returns the on-set-parameters callback that validates runtime changes
with the same rules (plus the node's cross-parameter check) and rejects bad ones with a reason.
"""
from __future__ import annotations

from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

from depth_ros.ros import compat


class ConfigError(ValueError):
    """Bad configuration: the node refuses to start. The message names the parameter."""


class StartupError(RuntimeError):
    """A resource the node needs (model, camera driver) could not be set up."""


class Param(NamedTuple):
    """
    One parameter: name, default (its type is the parameter's type), description.

    ``choices``: allowed values (strings); ``low``/``high``: inclusive numeric range;
    ``read_only``: fixed after start-up (topics, backend, model path).
    """

    name: str
    default: object
    description: str
    choices: Optional[Sequence[str]] = None
    low: Optional[float] = None
    high: Optional[float] = None
    read_only: bool = False


def _descriptor(spec: Param):
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
    desc = ParameterDescriptor(name=spec.name, description=spec.description,
                               read_only=spec.read_only)
    if spec.choices:
        desc.additional_constraints = 'one of: ' + ', '.join(spec.choices)
    if spec.low is not None or spec.high is not None:
        low = spec.low if spec.low is not None else -1e300
        high = spec.high if spec.high is not None else 1e300
        if isinstance(spec.default, bool):
            pass
        elif isinstance(spec.default, int):
            desc.integer_range = [IntegerRange(from_value=int(max(low, -2 ** 62)),
                                               to_value=int(min(high, 2 ** 62)), step=1)]
        elif isinstance(spec.default, float):
            desc.floating_point_range = [FloatingPointRange(from_value=float(low),
                                                            to_value=float(high), step=0.0)]
        if spec.low is not None and spec.high is not None:
            desc.additional_constraints = (desc.additional_constraints + ' ' if
                                           desc.additional_constraints else '') + \
                'range [{}, {}]'.format(spec.low, spec.high)
    return desc


def check_value(spec: Param, value) -> Optional[str]:
    """Why ``value`` is not valid for ``spec`` (None when it is)."""
    kind = type(spec.default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        return 'parameter `{}` must be of type {}, got {!r}'.format(
            spec.name, kind.__name__, value)
    if spec.choices and value not in spec.choices:
        return 'parameter `{}` must be one of {}, got {!r}'.format(
            spec.name, '|'.join(spec.choices), value)
    if kind in (int, float):
        if value != value:  # NaN
            return 'parameter `{}` must be a number, got {!r}'.format(spec.name, value)
        if (spec.low is not None and value < spec.low) or \
                (spec.high is not None and value > spec.high):
            return 'parameter `{}` must be in [{}, {}], got {!r}'.format(
                spec.name, '-inf' if spec.low is None else spec.low,
                'inf' if spec.high is None else spec.high, value)
    return None


def declare_params(node, specs: Sequence[Param],
                   validate: Optional[Callable[[Dict[str, object]], Optional[str]]] = None
                   ) -> Dict[str, object]:
    """
    Declare every spec on ``node``; return {name: value} after checking them all.

    :param validate: cross-parameter check on the full dict; returns an error text or None.
    :raises ConfigError: naming the first invalid parameter and its value.
    """
    from rclpy.exceptions import ParameterException
    values = {}
    for spec in specs:
        try:
            param = node.declare_parameter(spec.name, spec.default, _descriptor(spec))
        except ParameterException as exc:
            # rclpy's own range/type check ran first; say it as our checks do when we can.
            override = compat.overrides(node).get(spec.name)
            reason = check_value(spec, override.value) if override is not None else None
            raise ConfigError(reason or 'invalid value for parameter `{}`: {}'.format(
                spec.name, exc)) from None
        values[spec.name] = param.value
    for spec in specs:
        reason = check_value(spec, values[spec.name])
        if reason:
            raise ConfigError(reason)
        if isinstance(spec.default, float):
            values[spec.name] = float(values[spec.name])
    if validate is not None:
        reason = validate(dict(values))
        if reason:
            raise ConfigError(reason)
    return values


def _changes(by_name, parameters):
    """Return (changed {name: value}, error reason or None) of a parameter update."""
    changed = {}
    for p in parameters:
        spec = by_name.get(p.name)
        if spec is None:
            continue  # parameters this node does not own (use_sim_time ...)
        if spec.read_only:
            return None, 'parameter `{}` is read-only'.format(p.name)
        reason = check_value(spec, p.value)
        if reason:
            return None, reason
        changed[p.name] = float(p.value) if isinstance(spec.default, float) else p.value
    return changed, None


def on_set_validator(specs: Sequence[Param], current: Dict[str, object],
                     validate: Optional[Callable[[Dict[str, object]], Optional[str]]] = None,
                     apply: Optional[Callable[[Dict[str, object]], None]] = None):
    """
    Build an on-set-parameters callback (rclpy Humble ``add_on_set_parameters_callback``).

    It checks each changed parameter against its spec and the merged set against ``validate``;
    when all pass it updates ``current`` in place and calls ``apply(changed)``. Prefer
    :func:`install_parameter_callbacks`, which applies in the post-set callback where rclpy
    has one.
    """
    check = validator(specs, current, validate)
    by_name = {s.name: s for s in specs}

    def callback(parameters: List) -> object:
        result = check(parameters)
        if result.successful:
            changed, _ = _changes(by_name, parameters)
            current.update(changed)
            if apply is not None and changed:
                apply(changed)
        return result

    return callback


def validator(specs: Sequence[Param], current: Dict[str, object],
              validate: Optional[Callable[[Dict[str, object]], Optional[str]]] = None):
    """Return an on-set callback that only validates (it changes nothing)."""
    by_name = {s.name: s for s in specs}

    def callback(parameters: List) -> object:
        from rcl_interfaces.msg import SetParametersResult
        changed, reason = _changes(by_name, parameters)
        if reason is None and validate is not None:
            merged = dict(current)
            merged.update(changed)
            reason = validate(merged)
        if reason:
            return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    return callback


def install_parameter_callbacks(node, specs: Sequence[Param], current: Dict[str, object],
                                validate: Optional[Callable[[Dict[str, object]],
                                                            Optional[str]]] = None,
                                apply: Optional[Callable[[Dict[str, object]], None]] = None):
    """
    Validate runtime changes in the on-set callback and apply them once they are set.

    rclpy from Iron on has ``add_post_set_parameters_callback``: ``current`` is updated and
    ``apply(changed)`` called there, after every on-set callback accepted the change. Humble
    has only the on-set callback: there the change is applied at its end, once validated
    (:mod:`depth_ros.ros.compat` says which rclpy has which).
    """
    by_name = {s.name: s for s in specs}
    if not compat.has_post_set_parameters_callback(node):
        node.add_on_set_parameters_callback(on_set_validator(specs, current, validate, apply))
        return
    node.add_on_set_parameters_callback(validator(specs, current, validate))

    def applied(parameters: List) -> None:
        changed, _ = _changes(by_name, parameters)
        current.update(changed)
        if apply is not None and changed:
            apply(changed)

    node.add_post_set_parameters_callback(applied)


def unknown_overrides(node, specs: Sequence[Param]) -> List[str]:
    """
    Names given to the node (params file, ``-p``) that it does not declare, each with a hint.

    rclpy ignores such overrides without a word, so ``-p cloud_strid:=1`` would change nothing.
    """
    import difflib
    overrides = compat.overrides(node)
    own = {s.name for s in specs}
    declared = set(own) | (compat.declared_names(node) or set())   # use_sim_time and the like
    out = []
    for name in sorted(overrides):
        if name in declared or name.startswith('qos_overrides.'):
            continue
        hint = REMOVED.get(name)
        if hint is None:
            close = difflib.get_close_matches(name, sorted(own), n=1)
            hint = 'did you mean `{}`?'.format(close[0]) if close else 'not a parameter of ' \
                'this node (`ros2 param list` shows them)'
        out.append('unknown parameter `{}` ignored: {}'.format(name, hint))
    return out


# Parameters of earlier versions, with what replaces them (reported when a params file has them).
REMOVED = {
    'buffer_size': 'removed in 0.2: pairing waits by age (`pairing_window_s`) under a memory '
                   'cap (`pairing_max_mb`)',
}


def reliability_param(default: str = 'best_effort') -> Param:
    """Return the QoS reliability parameter every node shares."""
    return Param('reliability', default, 'QoS reliability of image/cloud topics: best_effort '
                 '(sensor data, default) or reliable (RViz on Humble subscribes reliable)',
                 choices=('best_effort', 'reliable'), read_only=True)


def qos_depth_param(default: int = 2) -> Param:
    """Return the QoS history depth parameter every node shares."""
    return Param('qos_depth', default, 'QoS history depth of image/cloud topics (small: the '
                 'graph works on the newest frame)', low=1, high=100, read_only=True)


def throttle_param(default: float = 2.0) -> Param:
    """Return the log rate-limit parameter every node shares."""
    return Param('log_throttle_s', default, 'bad-frame errors of one kind are logged at most '
                 'once per this many seconds', low=0.0, high=3600.0)


def diagnostics_period_param(default: float = 1.0) -> Param:
    """Return the /diagnostics period parameter every node shares."""
    return Param('diagnostics_period_s', default, 'seconds between two /diagnostics messages '
                 'of this node', low=0.05, high=60.0, read_only=True)


def stamp_reset_param(default: float = 1.0) -> Param:
    """Return the source-restart threshold of the nodes that check stamp order."""
    return Param('stamp_reset_s', default, 'a stamp older than the previous of its stream by '
                 'more than this is a source restart (bag loop, sim-time reset): accepted, '
                 'with a warning, and the node starts over; smaller steps back are dropped as '
                 'out-of-order', low=0.0, high=1e6)
