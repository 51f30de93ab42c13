"""
Camera sources behind one interface (see depth_ros/sources/base.py).

``make_source(kind, path=None, **options)`` builds one by name, as zed_node's ``source``
parameter and the launch file's ``source:=`` argument name them:

- ``live``: a ZED camera through pyzed (options: see ZedSource);
- ``svo``: a ZED SVO recording at ``path`` through pyzed;
- ``sample``: the bundled Middlebury pair with SGBM depth;
- ``folder``: stereo pairs and a calibration YAML in the folder ``path``, SGBM depth;
- ``bag``: a rosbag2 recording of ZED topics at ``path``, read with `rosbags`.

Replay options (``loop``, ``rate``, ``fps``, ``drop_after``, ``outage_s``, ``outage_repeat``)
wrap the replay kinds in a ReplaySource; ``live`` takes none of them and ``svo`` loops
itself (the SDK rewinds the file). For ``live`` and ``svo``, ``fps`` is the camera frame
rate. Sources import their heavy dependencies only on use.

Errors (depth_ros/sources/base.py): construction raises ValueError for a bad option and
SourceConfigError (also a ValueError) for a path or a layout that cannot work; ``open()`` and
``read()`` raise only SourceError and its subclasses SourceConfigError (stop), FrameError
(skip the frame) and SourceError itself (close, back off, reopen).
"""
from __future__ import annotations

import inspect

from depth_ros.sources.base import Frame, FrameError, FrameSource, SourceConfigError, \
    SourceError

KINDS = ('live', 'svo', 'sample', 'folder', 'bag')
REPLAY_OPTIONS = ('loop', 'rate', 'fps', 'drop_after', 'outage_s', 'outage_repeat')

__all__ = ['Frame', 'FrameError', 'FrameSource', 'SourceConfigError', 'SourceError', 'KINDS',
           'make_source']


def _source_class(kind: str):
    if kind in ('live', 'svo'):
        from depth_ros.sources.zed import ZedSource
        return ZedSource
    if kind == 'sample':
        from depth_ros.sources.sample import SampleSource
        return SampleSource
    if kind == 'folder':
        from depth_ros.sources.folder import FolderSource
        return FolderSource
    from depth_ros.sources.rosbag import RosbagSource
    return RosbagSource


def _construct(cls, kind: str, args: dict):
    # Name an unknown option instead of letting a TypeError from deep inside escape.
    params = inspect.signature(cls.__init__).parameters
    names = [p.name for p in params.values()
             if p.kind != p.VAR_KEYWORD and p.name not in ('self', 'path', 'svo_path')]
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        # The SGBM sources pass the rest on to sgbm_depth.
        from depth_ros.core.stereo import SGBM_OPTIONS
        names += list(SGBM_OPTIONS)
    unknown = sorted(set(args) - set(names) - {'path', 'svo_path'})
    if unknown:
        raise ValueError('source `{}` does not take option(s) {}; it takes {}'.format(
            kind, ', '.join(unknown), ', '.join(names)))
    return cls(**args)


def make_source(kind: str, path=None, **options) -> FrameSource:
    """
    Build a frame source by kind (see the module docstring).

    :raises ValueError: unknown kind, a path missing or given where none is taken, an unknown
        option; SourceConfigError (a ValueError) for a path that does not exist or a folder
        without its files.
    :raises ImportError: the kind's optional dependency (pyzed, rosbags, scikit-image) is missing.
    """
    if kind not in KINDS:
        raise ValueError('`source` must be one of {}, got {!r}'.format('|'.join(KINDS), kind))
    needs_path = kind in ('svo', 'folder', 'bag')
    if needs_path and not path:
        raise ValueError('source `{}` needs a path, got {!r}'.format(kind, path))
    if not needs_path and path:
        raise ValueError('source `{}` takes no path, got {!r}'.format(kind, path))
    # For the ZED kinds `fps` is the camera's frame rate (ZedSource), not the replay rate.
    replay_keys = [k for k in REPLAY_OPTIONS if not (k == 'fps' and kind in ('live', 'svo'))]
    replay = {k: options.pop(k) for k in replay_keys if k in options}
    cls = _source_class(kind)
    if kind == 'live':
        if replay:
            raise ValueError('source `live` takes no replay option(s) {}'.format(
                ', '.join(sorted(replay))))
        return _construct(cls, kind, options)
    if kind == 'svo':
        if 'loop' in replay:  # the SDK rewinds the file itself (set_svo_position)
            options['loop'] = replay.pop('loop')
        options['svo_path'] = path
        source = _construct(cls, kind, options)
    else:
        if kind != 'sample':
            options['path'] = path
        source = _construct(cls, kind, options)
    if replay:
        from depth_ros.sources.replay import ReplaySource
        source = ReplaySource(source, **replay)
    return source
