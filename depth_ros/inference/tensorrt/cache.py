"""
Engine cache: what an engine was built for, recorded next to it, and checked before loading.

TensorRT plans are not portable: another TensorRT version, another GPU or a changed ONNX makes a
plan unusable, and loading one blindly ends in 'magicTag' / 'Version tag does not match'
deserialization errors, or worse, a wrong but running engine. Every engine therefore has a JSON
sidecar ``<engine>.json`` with its key, and nothing is deserialized before the key, the file size
and the file's sha256 match. Engines are read only from the configured cache directory.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from typing import Dict, List, Optional, Sequence, Tuple

from depth_ros.util import check_number_as, file_sha256, user_cache_dir, write_atomic

LOG = logging.getLogger('depth_ros.tensorrt')

SIDECAR_FORMAT = 1
ENGINE_SUFFIX = '.engine'
PRECISIONS = ('fp16', 'fp32', 'int8')
# Key fields, in the order mismatches are reported. The workspace limit is recorded but is not
# part of the key: it changes which tactics were tried, not whether the plan is valid here.
KEY_FIELDS = ('tensorrt_version', 'gpu_name', 'compute_capability', 'onnx_sha256',
              'input_shape', 'precision', 'dla_core')
RUNTIME_FIELDS = ('tensorrt_version', 'gpu_name', 'compute_capability')
ENV_CACHE_DIR = 'DEPTH_ROS_ENGINE_CACHE'


class EngineCacheError(RuntimeError):
    """An engine in the cache cannot be used (corrupt file, missing or unreadable record)."""


class EngineMismatchError(EngineCacheError):
    """A cached engine was built for something else; ``differences`` lists what."""

    def __init__(self, path: str, differences: List[str]):
        self.path = path
        self.differences = list(differences)
        super(EngineMismatchError, self).__init__(
            'engine {} does not match: {}; rebuild it with `depth-ros model build`'.format(
                path, '; '.join(self.differences)))


def default_cache_dir() -> str:
    """$DEPTH_ROS_ENGINE_CACHE, else $XDG_CACHE_HOME/depth_ros/engines (~/.cache/...)."""
    return user_cache_dir('engines', env_var=ENV_CACHE_DIR)


def check_precision(precision: str) -> str:
    """Validate a precision name."""
    if precision not in PRECISIONS:
        raise ValueError('`precision` must be one of {}, got {!r}'.format(
            '|'.join(PRECISIONS), precision))
    return precision


def check_dla_core(dla_core) -> Optional[int]:
    """Validate a DLA core index (None = GPU only)."""
    return check_number_as('`{name}` must be None or an integer >= 0, got {value!r}',
                           'dla_core', dla_core, low=0, integer=True, allow_none=True)


def make_key(runtime: Dict[str, str], onnx_sha256: str, input_shape: Sequence[int],
             precision: str, dla_core: Optional[int] = None) -> Dict[str, object]:
    """Make the cache key: runtime (GPU, compute capability, TensorRT version) + build inputs."""
    for field in RUNTIME_FIELDS:
        if not runtime.get(field):
            raise ValueError('`runtime` is missing {!r}: {!r}'.format(field, runtime))
    if not re.match(r'^[0-9a-f]{64}$', str(onnx_sha256)):
        raise ValueError('`onnx_sha256` must be 64 hex digits, got {!r}'.format(onnx_sha256))
    shape = [int(d) for d in input_shape]
    if len(shape) != 4 or shape[0] != 1 or shape[1] != 3 or min(shape) <= 0:
        raise ValueError('`input_shape` must be [1, 3, h, w] with h, w > 0, got {!r}'.format(
            list(input_shape)))
    dla_core = check_dla_core(dla_core)
    return {
        'tensorrt_version': str(runtime['tensorrt_version']),
        'gpu_name': str(runtime['gpu_name']),
        'compute_capability': str(runtime['compute_capability']),
        'onnx_sha256': str(onnx_sha256),
        'input_shape': shape,
        'precision': check_precision(precision),
        'dla_core': dla_core,
    }


def key_digest(key: Dict[str, object]) -> str:
    """Short stable hash of a key (canonical JSON), used in engine file names."""
    canonical = json.dumps({f: key[f] for f in KEY_FIELDS}, sort_keys=True)
    return hashlib.sha256(canonical.encode('utf-8')).hexdigest()[:12]


def onnx_stem(onnx_path: str) -> str:
    """File-name-safe stem of an ONNX path ('models/da2 vits.onnx' -> 'da2_vits')."""
    return re.sub(r'[^A-Za-z0-9_.-]+', '_', os.path.splitext(os.path.basename(onnx_path))[0])


def engine_filename(onnx_path: str, key: Dict[str, object]) -> str:
    """'<onnx stem>_<w>x<h>_<precision>[_dla<N>]_<digest>.engine'."""
    stem = onnx_stem(onnx_path)
    h, w = key['input_shape'][2], key['input_shape'][3]
    dla = '' if key['dla_core'] is None else '_dla{}'.format(key['dla_core'])
    return '{}_{}x{}_{}{}_{}{}'.format(stem, w, h, key['precision'], dla, key_digest(key),
                                       ENGINE_SUFFIX)


def describe_difference(field: str, built, current) -> str:
    """One human sentence for one differing key field."""
    if field == 'tensorrt_version':
        return 'engine built with TensorRT {} but this is {}'.format(built, current)
    if field == 'gpu_name':
        return 'engine built on GPU {!r} but this is {!r}'.format(built, current)
    if field == 'compute_capability':
        return 'engine built for compute capability {} but this GPU is {}'.format(built, current)
    if field == 'onnx_sha256':
        return ('engine built from an ONNX file with sha256 {}... but the ONNX given has sha256 '
                '{}... (the model changed)'.format(str(built)[:12], str(current)[:12]))
    if field == 'input_shape':
        return 'engine input shape is {} but {} was requested'.format(built, current)
    if field == 'precision':
        return 'engine precision is {} but {} was requested'.format(built, current)
    if field == 'dla_core':
        def where(core):
            return 'the GPU' if core is None else 'DLA core {}'.format(core)
        return 'engine built for {} but {} was requested'.format(where(built), where(current))
    return '{} is {!r} in the engine but {!r} here'.format(field, built, current)


def compare_key(recorded: Dict[str, object], wanted: Dict[str, object]) -> List[str]:
    """
    Sentences for every field of ``wanted`` that differs from ``recorded`` (empty = match).

    ``wanted`` may hold a subset of the key fields (e.g. only runtime fields when no ONNX is
    given); fields it does not hold are not compared.
    """
    out = []
    for field in KEY_FIELDS:
        if field not in wanted:
            continue
        built, current = recorded.get(field), wanted[field]
        if field == 'input_shape' and built is not None:
            built = [int(d) for d in built]
            current = [int(d) for d in current]
        if built != current:
            out.append(describe_difference(field, built, current))
    return out


def sidecar_path(engine_path: str) -> str:
    """Return the path of the JSON record next to an engine: '<engine>.json'."""
    return engine_path + '.json'


class EngineCache(object):
    """
    A directory of engines with their JSON records.

    :param cache_dir: the configured cache directory (created on write); engines are read only
        from here.
    """

    def __init__(self, cache_dir: Optional[str] = None):
        self.cache_dir = os.path.abspath(cache_dir or default_cache_dir())

    # -- paths -----------------------------------------------------------------------------
    def resolve(self, engine_path: str) -> str:
        """Real path of ``engine_path`` (symlinks resolved); ValueError when outside the cache."""
        root = os.path.realpath(self.cache_dir)
        path = engine_path
        if not os.path.isabs(path) and not os.path.exists(path):
            path = os.path.join(self.cache_dir, path)  # a bare name is looked up in the cache
        real = os.path.realpath(path)
        if os.path.commonpath([root, real]) != root:
            raise ValueError(
                '`engine` {} resolves to {}, outside the engine cache directory {}; engines are '
                'loaded only from the cache (set it: depth-ros --cache-dir, depth_node\'s '
                '`engine_cache_dir` (engine_cache_dir:= to the launch), the API\'s cache_dir; '
                'or build it there with `depth-ros model build`)'.format(engine_path, real, root))
        return real

    def path_for(self, onnx_path: str, key: Dict[str, object]) -> str:
        """Where the engine for ``key`` lives in this cache."""
        return os.path.join(self.cache_dir, engine_filename(onnx_path, key))

    def candidates(self, onnx_path: str) -> List[str]:
        """Engines in the cache built from an ONNX file of the same name, newest first."""
        if not os.path.isdir(self.cache_dir):
            return []
        stem = onnx_stem(onnx_path)
        out = [os.path.join(self.cache_dir, n) for n in os.listdir(self.cache_dir)
               if n.startswith(stem + '_') and n.endswith(ENGINE_SUFFIX)]
        return sorted(out, key=os.path.getmtime, reverse=True)

    # -- records ---------------------------------------------------------------------------
    def write(self, engine_path: str, plan: bytes, key: Dict[str, object],
              extra: Optional[Dict[str, object]] = None) -> str:
        """Write plan and record atomically; returns the engine path."""
        engine_path = os.path.abspath(engine_path)
        os.makedirs(os.path.dirname(engine_path), exist_ok=True)
        self.resolve(engine_path)
        record = {
            'format': SIDECAR_FORMAT,
            'key': {f: key[f] for f in KEY_FIELDS},
            'engine_file': os.path.basename(engine_path),
            'engine_bytes': len(plan),
            'engine_sha256': hashlib.sha256(plan).hexdigest(),
            'created': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
        }
        record.update(extra or {})
        # A build interrupted half-way must never leave a truncated engine under its name.
        write_atomic(engine_path, plan)
        write_atomic(sidecar_path(engine_path),
                     (json.dumps(record, indent=2, sort_keys=True) + '\n').encode('utf-8'))
        LOG.info('engine written to %s (%.1f MB), record %s', engine_path, len(plan) / 1e6,
                 sidecar_path(engine_path))
        return engine_path

    def read_record(self, engine_path: str) -> Dict[str, object]:
        """Read the JSON record of a cached engine; EngineCacheError naming it when unusable."""
        path = sidecar_path(engine_path)
        if not os.path.isfile(path):
            raise EngineCacheError(
                'engine {} has no cache record {}: refusing to load an engine whose TensorRT '
                'version, GPU and ONNX are unknown; rebuild it with `depth-ros model build`'
                .format(engine_path, path))
        try:
            with open(path, 'r') as f:
                record = json.load(f)
        except (OSError, ValueError) as exc:
            raise EngineCacheError('cache record {} is unreadable: {}'.format(path, exc))
        key = record.get('key') if isinstance(record, dict) else None
        if not isinstance(key, dict) or any(f not in key for f in KEY_FIELDS) \
                or 'engine_bytes' not in record or 'engine_sha256' not in record:
            raise EngineCacheError('cache record {} is incomplete (format {!r}); rebuild the '
                                   'engine'.format(path, record.get('format')
                                                   if isinstance(record, dict) else None))
        return record

    def check_file(self, engine_path: str, record: Dict[str, object],
                   verify_hash: bool = True) -> None:
        """
        Size and sha256 of the engine file against its record: catches truncation/corruption.

        :raises FileNotFoundError: no such engine; EngineCacheError: truncated or corrupt.
        """
        if not os.path.isfile(engine_path):
            raise FileNotFoundError('engine file {} does not exist'.format(engine_path))
        size = os.path.getsize(engine_path)
        if size != int(record['engine_bytes']):
            raise EngineCacheError(
                'engine file {} is {}: {} bytes, but {} were written at build time; rebuild it'
                .format(engine_path, 'truncated' if size < int(record['engine_bytes'])
                        else 'the wrong size', size, record['engine_bytes']))
        if verify_hash and file_sha256(engine_path) != record['engine_sha256']:
            raise EngineCacheError(
                'engine file {} is corrupt: its sha256 differs from the one recorded at build '
                'time; rebuild it'.format(engine_path))

    def validate(self, engine_path: str, wanted: Dict[str, object],
                 verify_hash: bool = True) -> Tuple[str, Dict[str, object]]:
        """
        Resolve, read the record, compare ``wanted`` key fields, check the file.

        :returns: (real engine path, record). Raises ValueError (outside the cache),
            FileNotFoundError, EngineMismatchError or EngineCacheError.
        """
        real = self.resolve(engine_path)
        if not os.path.isfile(real):
            raise FileNotFoundError('engine file {} does not exist (cache directory {})'.format(
                engine_path, self.cache_dir))
        record = self.read_record(real)
        differences = compare_key(record['key'], wanted)
        if differences:
            raise EngineMismatchError(real, differences)
        self.check_file(real, record, verify_hash=verify_hash)
        return real, record
