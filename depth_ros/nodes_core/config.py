"""
The nodes' parameters, their checks and what they map to, without ROS.

Each node declares its specs from here; the launch file, the docs and the tests read them from
here too. Validators return None when the values are fine, else the reason (naming the
parameter and its value). Nothing here imports rclpy.

A new runtime parameter is three edits: its :class:`Param` in the node's tuple here (name,
default, range or choices, description; an aligner option comes from ``option_specs()``
instead), the line of the node that reads ``self.cfg[name]`` where it is used (the base node
keeps ``cfg`` current on every accepted change), and its row in docs/ros.md. A line in
config/zed_depth.yaml is optional (a test holds its values equal to the defaults).
"""
from __future__ import annotations

import os
from typing import Dict, Optional

from depth_ros.inference.registry import NODE_BACKENDS
from depth_ros.nodes_core.params import ConfigError, DIAGNOSTICS_PERIOD, LOG_THROTTLE, Param, \
    qos_depth, RELIABILITY, STAMP_RESET, StartupError
from depth_ros.sources.zed import DEPTH_MODES, RESOLUTIONS

# --------------------------------------------------------------------------------- zed_node
SOURCES = ('live', 'svo', 'sample', 'folder', 'bag')

ZED_PARAMS = (
    Param('source', 'live', 'frame source: live / svo (pyzed), sample (bundled pair), folder '
          '(stereo pairs + calibration YAML), bag (rosbag2 of ZED topics)', choices=SOURCES,
          read_only=True),
    Param('path', '', 'SVO file, folder or bag path (svo, folder, bag)', read_only=True),
    Param('camera_name', 'zed', 'camera name; frames are <camera_name>_left_camera_optical_frame',
          read_only=True),
    Param('frame_id', '', 'override of the optical frame id (empty: from camera_name)',
          read_only=True),
    Param('resolution', 'HD720', 'ZED resolution (live/svo); HD1200, SVGA and AUTO need ZED SDK '
          '4 and a ZED X', choices=tuple(r for r in RESOLUTIONS), read_only=True),
    Param('grab_fps', 30, 'ZED frame rate (live/svo)', low=0, high=120, read_only=True),
    Param('depth_mode', 'PERFORMANCE', 'ZED depth mode (live/svo); NEURAL_PLUS needs ZED SDK '
          '4.1 or later', choices=tuple(m for m in DEPTH_MODES if m != 'NONE'),
          read_only=True),
    Param('min_depth', 0.3, 'ZED minimum depth in metres (live/svo)', low=0.01, high=1000.0,
          read_only=True),
    Param('max_depth', 20.0, 'ZED maximum depth in metres (live/svo)', low=0.01, high=1000.0,
          read_only=True),
    Param('confidence_threshold', 95, 'ZED depth confidence threshold 1..100 (live/svo)',
          low=1, high=100, read_only=True),
    Param('texture_confidence_threshold', 100, 'ZED texture confidence threshold 1..100',
          low=1, high=100, read_only=True),
    Param('publish_downscale', 1.0, 'publish at this fraction of the camera resolution '
          '(K and P scaled with it)', low=0.05, high=1.0, read_only=True),
    Param('loop', True, 'replay sources: start again at the end', read_only=True),
    Param('rate', 1.0, 'replay sources: speed relative to the recorded stamps (0: as fast as '
          'possible)', low=0.0, high=100.0, read_only=True),
    Param('fps', 0.0, 'replay sources: deliver at this rate with wall-clock stamps (0: use the '
          'recorded stamps; the sample has none and defaults to 10)', low=0.0, high=1000.0,
          read_only=True),
    Param('drop_after', 0, 'testing: simulate a camera that disappears after this many frames '
          '(0: never)', low=0, high=10 ** 9, read_only=True),
    Param('outage_s', 2.0, 'testing: how long a simulated disappearance lasts', low=0.0,
          high=3600.0, read_only=True),
    Param('retry_initial_s', 0.2, 'first wait after a failed grab or open; doubles up to '
          'retry_max_s', low=0.0, high=60.0),
    Param('retry_max_s', 5.0, 'longest wait between reconnection attempts', low=0.0,
          high=600.0),
    Param('max_retries', 0, 'consecutive failed opens/grabs after which the node gives up with '
          'one FATAL line (0: retry for ever, as a camera that is plugged back is found again)',
          low=0, high=10 ** 6),
    LOG_THROTTLE,
    DIAGNOSTICS_PERIOD,
    RELIABILITY,
    qos_depth(2),
)


def validate_zed(values) -> Optional[str]:
    """Cross-parameter checks of zed_node."""
    kind, path = values['source'], values['path']
    if kind in ('svo', 'folder', 'bag') and not path:
        return 'parameter `path` is empty; source {!r} needs one'.format(kind)
    if kind in ('live', 'sample') and path:
        return 'parameter `path` must be empty for source {!r}, got {!r}'.format(kind, path)
    if values['max_depth'] <= values['min_depth']:
        return 'parameter `max_depth` ({}) must be > `min_depth` ({})'.format(
            values['max_depth'], values['min_depth'])
    if values['retry_max_s'] < values['retry_initial_s']:
        return 'parameter `retry_max_s` ({}) must be >= `retry_initial_s` ({})'.format(
            values['retry_max_s'], values['retry_initial_s'])
    return None


def user_path(text: str) -> str:
    """
    Return a path parameter with a leading ``~`` expanded (the user's home).

    ``ros2 launch ... path:=~/run.svo2`` reaches the node with the ``~`` as it is: the shell
    expands it only at the start of a word, not after ``path:=``.
    """
    return os.path.expanduser(text) if text.startswith('~') else text


def source_options(values) -> dict:
    """Return the make_source keyword arguments for zed_node's parameters."""
    kind = values['source']
    if kind in ('live', 'svo'):
        options = {k: values[k] for k in (
            'resolution', 'depth_mode', 'min_depth', 'max_depth', 'confidence_threshold',
            'texture_confidence_threshold', 'publish_downscale', 'camera_name')}
        options['fps'] = values['grab_fps']
        if kind == 'svo':
            options.update(loop=values['loop'], rate=values['rate'])
        return options
    options = {'loop': values['loop'], 'rate': values['rate']}
    fps = values['fps'] or (10.0 if kind == 'sample' else 0.0)
    if fps:
        options['fps'] = fps
    if values['drop_after']:
        options.update(drop_after=values['drop_after'], outage_s=values['outage_s'])
    return options


# ------------------------------------------------------------------------------- depth_node
# auto: TensorRT where it runs, else ONNX Runtime with CUDA, else on the CPU (inference.auto).
DEPTH_BACKENDS = ('auto',) + tuple(NODE_BACKENDS)
PRECISIONS = ('fp16', 'fp32', 'int8')

DEPTH_PARAMS = (
    Param('backend', 'auto', 'inference backend: auto (tensorrt where TensorRT, pycuda and a GPU '
          'answer, else onnxruntime with CUDA, else on the CPU), or one of them; standin is a '
          'fixed-latency stand-in for tests and benchmarks, not a model',
          choices=DEPTH_BACKENDS, read_only=True),
    Param('model_path', 'auto', 'auto (or empty): Depth Anything V2 Small, found or fetched '
          'once (engine cache, prepared ONNX, Hugging Face cache or download); else an .onnx '
          'file, an engine in the engine cache, a checkpoint folder or .pth (torch) or a hub '
          'id; unused by standin', read_only=True),
    Param('input_width', 0, 'model input width, multiple of 14 (0: the model file\'s or 518)',
          low=0, high=4096, read_only=True),
    Param('input_height', 0, 'model input height, multiple of 14 (0: the model file\'s or 294)',
          low=0, high=4096, read_only=True),
    Param('device', 'cpu', 'torch backend device (cpu, cuda, cuda:0)', read_only=True),
    Param('engine_cache_dir', '', 'tensorrt backend: the engine cache directory; engines load '
          'only from inside it (empty: $DEPTH_ROS_ENGINE_CACHE or ~/.cache/depth_ros/engines)',
          read_only=True),
    Param('precision', 'fp16', 'tensorrt backend: precision of the engine built at the first '
          'start (int8 needs a calibration table from `depth-ros model setup --calib-dir`)',
          choices=PRECISIONS, read_only=True),
    Param('workspace_mb', 1024, 'tensorrt backend: builder workspace limit in MiB for the '
          'first-start build (the Xavier NX shares 8 GB between CPU and GPU)', low=1,
          high=65536, read_only=True),
    Param('standin_latency_ms', 30.0, 'standin backend: fixed inference time in ms',
          low=0.0, high=10000.0),
    Param('standin_mode', 'intensity', 'standin backend: output from image intensity or a '
          'vertical gradient', choices=('intensity', 'gradient'), read_only=True),
    LOG_THROTTLE,
    DIAGNOSTICS_PERIOD,
    STAMP_RESET,
    RELIABILITY,
    qos_depth(1),
)


def validate_depth(values) -> Optional[str]:
    """Cross-parameter checks of depth_node (an empty model_path means auto)."""
    model = values['model_path'].strip().lower()
    if model.endswith(('.engine', '.plan')) and values['backend'] not in ('auto', 'tensorrt'):
        return 'parameter `model_path` {!r} is a TensorRT engine; it needs backend tensorrt ' \
               '(or auto), got {!r}'.format(values['model_path'], values['backend'])
    if (values['input_width'] == 0) != (values['input_height'] == 0):
        return 'parameters `input_width` and `input_height` must both be 0 or both be set, ' \
               'got {} and {}'.format(values['input_width'], values['input_height'])
    return None


def setup_command(values) -> str:
    """Return the one command that puts the model depth_node looks for on the machine."""
    command = 'ros2 run depth_ros depth-ros model setup'
    if values['backend'] in ('tensorrt', 'onnxruntime'):
        command += ' --backend ' + values['backend']
    model = values['model_path'].strip()
    if model not in ('', 'auto'):   # a hub id: that model, not the default one
        command += ' --model ' + model
    if values['input_width']:
        command += ' --size {}x{}'.format(values['input_width'], values['input_height'])
    if values['backend'] in ('auto', 'tensorrt') and values['precision'] != 'fp16':
        command += ' --precision ' + values['precision']
    if values['backend'] in ('auto', 'tensorrt') and values['engine_cache_dir']:
        command += ' --engine-cache-dir ' + values['engine_cache_dir']
    return command


def open_model(values):
    """
    Open depth_node's model (inference.auto.open_depth_model); return its ``Opened``.

    StartupError (the model cannot be found, built or loaded) or ConfigError (the request
    itself is wrong), each with a one-line reason.
    """
    from depth_ros.inference import ModelLoadError
    from depth_ros.inference.auto import EngineBuildError, open_depth_model
    from depth_ros.inference.default_model import ModelUnavailable
    size = (values['input_width'], values['input_height']) if values['input_width'] else None
    try:
        return open_depth_model(
            values['backend'], user_path(values['model_path'].strip()), input_size=size,
            precision=values['precision'], workspace_mb=values['workspace_mb'],
            engine_cache_dir=user_path(values['engine_cache_dir']) or None,
            device=values['device'],
            fix='run `{}`'.format(setup_command(values)),
            standin_latency_ms=values['standin_latency_ms'],
            standin_mode=values['standin_mode'])
    except (ModelLoadError, ModelUnavailable, EngineBuildError) as exc:
        raise StartupError(str(exc)) from None
    except ValueError as exc:   # the request itself is wrong (input size not a multiple of 14)
        raise ConfigError(str(exc)) from None


# --------------------------------------------------------------------------- alignment_node
def _aligner_params():
    """
    Return the MetricAligner options as ROS parameters (core.alignment_options).

    Names, defaults, ranges and descriptions come from ``option_specs()``. An option that takes
    None (off) is 0.0 here (``zero_is_off``). ``relative_kind`` and ``seed`` are read-only;
    every other option can change at runtime (the aligner keeps its temporal state).
    """
    from depth_ros.core.alignment_options import option_specs
    return tuple(Param(spec.name, 0.0 if spec.default is None else spec.default,
                       spec.description + (' (0: off)' if spec.allow_none else ''),
                       choices=spec.choices, low=spec.low, high=spec.high,
                       read_only=not spec.runtime, zero_is_off=spec.allow_none)
                 for spec in option_specs())


ALIGNER_PARAMS = _aligner_params()
# Parameters that configure the MetricAligner (applied with set_options when one changes).
ALIGNER_KEYS = tuple(p.name for p in ALIGNER_PARAMS)

ALIGNMENT_PARAMS = ALIGNER_PARAMS + (
    Param('use_confidence', True, 'pair and use the ZED confidence map', read_only=True),
    Param('use_image', True, 'pair the colour image (coloured cloud, edge-aware correction)',
          read_only=True),
    Param('use_inference_stamps', True, 'subscribe `inference_started` (depth_node\'s '
          '~/inference_started): the stereo set of the frame being inferred is kept until its '
          'disparity arrives, whatever the memory cap', read_only=True),
    Param('prepare_during_inference', True, 'prepare the stereo side of the frame the network '
          'runs on while it runs (~5 ms less latency after inference, ~3 ms more CPU per cloud '
          'at 720p: the prepared planes are read again later); false: align each set whole when '
          'its disparity comes', read_only=True),
    Param('use_right_camera_info', True, 'subscribe `right_camera_info` (the right camera\'s '
          'CameraInfo): its baseline -P[0,3]/P[0,0] replaces `baseline_m` in the stereo noise '
          'model', read_only=True),
    Param('pairing_window_s', 1.0, 'latency bound: a stereo set waits for its disparity until '
          'it is this many seconds older than the newest input (Marigold keyframes: 10)',
          low=0.05, high=600.0),
    Param('pairing_max_mb', 512.0, 'cap on the message payloads waiting to be paired (MB); '
          'beyond it the oldest sets are dropped, never the newest three nor the one being '
          'inferred', low=1.0, high=65536.0),
    STAMP_RESET,
    Param('cloud_stride', 2, 'keep every n-th pixel of the cloud in both directions',
          low=1, high=32),
    Param('cloud_min_range', 0.0, 'cloud points nearer than this are NaN (m; 0: off)',
          low=0.0, high=1000.0),
    Param('cloud_max_range', 0.0, 'cloud points farther than this are NaN (m; 0: off)',
          low=0.0, high=10000.0),
    Param('cloud_edge_threshold', 0.1, 'cloud points on the far side of a depth jump of more '
          'than this fraction per pixel are NaN (flying points; ~/depth keeps them; 0: off)',
          low=0.0, high=10.0),
    Param('colored_max_depth', 10.0, 'far end of the ~/colored colour scale (m; 0: auto)',
          low=0.0, high=10000.0),
    Param('stale_after_s', 3.0, '/diagnostics reports an error when no output was published '
          'for this long while inputs arrive (and a warning without inputs)', low=0.1,
          high=3600.0),
    LOG_THROTTLE,
    DIAGNOSTICS_PERIOD,
    RELIABILITY,
    qos_depth(5),
)


def validate_alignment(values) -> Optional[str]:
    """Cross-parameter checks of alignment_node (the aligner's own checks included)."""
    if values['max_depth'] <= values['min_depth']:
        return 'parameter `max_depth` ({}) must be > `min_depth` ({})'.format(
            values['max_depth'], values['min_depth'])
    if values['cloud_max_range'] and values['cloud_max_range'] <= values['cloud_min_range']:
        return 'parameter `cloud_max_range` ({}) must be > `cloud_min_range` ({}) or 0'.format(
            values['cloud_max_range'], values['cloud_min_range'])
    from depth_ros.core.alignment_options import AlignerOptions
    try:
        AlignerOptions(**aligner_options(values))
    except ValueError as exc:
        return 'parameter {}'.format(str(exc).replace('option ', '', 1))
    return None


def aligner_options(values) -> Dict[str, object]:
    """Return the MetricAligner keyword arguments for alignment_node's parameters."""
    return {p.name: None if p.zero_is_off and not values[p.name] else values[p.name]
            for p in ALIGNER_PARAMS}


def make_aligner(values):
    """Build the MetricAligner for alignment_node's parameters (ValueError names the option)."""
    from depth_ros.core.alignment import MetricAligner
    return MetricAligner(**aligner_options(values))


# ---------------------------------------------------------------------------- marigold_node
def _marigold_checkpoint():
    from depth_ros.inference.marigold import DEFAULT_CHECKPOINT
    return DEFAULT_CHECKPOINT


MARIGOLD_PARAMS = (
    Param('checkpoint', _marigold_checkpoint(), 'hub id or folder (prs-eth/marigold-depth-v1-1, '
          'prs-eth/marigold-depth-lcm-v1-0), or tiny-random (untrained, for tests)',
          read_only=True),
    Param('device', 'auto', 'torch device: auto (cuda if available, else cpu), cuda, cuda:N, '
          'cpu', read_only=True),
    Param('dtype', 'auto', 'auto (fp16 on cuda, fp32 on cpu), fp16 or fp32',
          choices=('auto', 'fp16', 'fp32'), read_only=True),
    Param('steps', 0, 'denoising steps; 0 = checkpoint default (v1-1: 1-4)', low=0, high=50,
          read_only=True),
    Param('ensemble_size', 1, '1, or >= 3 predictions ensembled (publishes ~/uncertainty)',
          low=1, high=20, read_only=True),
    Param('processing_resolution', -1, 'longer side the network sees; -1 = checkpoint '
          'default (768), 0 = native', low=-1, high=4096, read_only=True),
    Param('seed', 0, 'seed of the initial noise (repeatable keyframes); -1 = random',
          low=-1, read_only=True),
    Param('keyframe_period_s', 5.0, 'seconds between timed keyframes; 0 = only on ~/capture',
          low=0.0, high=3600.0, read_only=True),
    Param('log_throttle_s', 2.0, 'failed keyframes of one kind of error are logged at most once '
          'per this many seconds (changeable at runtime)', low=0.0, high=3600.0),
    DIAGNOSTICS_PERIOD,
    RELIABILITY,
)


# Each node's parameters, by its executable's name.
NODE_PARAMS = {'zed_node': ZED_PARAMS, 'depth_node': DEPTH_PARAMS,
               'alignment_node': ALIGNMENT_PARAMS, 'marigold_node': MARIGOLD_PARAMS}


def marigold_settings(values) -> dict:
    """Return the Marigold steps, resolution and seed from the node's parameters."""
    return {'steps': values['steps'] or None,
            'processing_resolution': (None if values['processing_resolution'] < 0
                                      else values['processing_resolution']),
            'seed': None if values['seed'] < 0 else values['seed']}
