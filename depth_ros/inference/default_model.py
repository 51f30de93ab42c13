"""
The one resolver of the default model, Depth Anything V2 Small: ``model: auto``.

In order, the first that exists wins:

1. (tensorrt) an engine in the engine cache whose record matches this GPU, TensorRT version,
   input size and precision, built from the default model (and, when a copy of the model is
   on disk, from that copy: its sha256);
2. a prepared ONNX on disk (onnx_prepare's files: the depth_ros cache's ``onnx/`` folder, then
   the models folders), for this size and profile;
3. ``onnx-community/depth-anything-v2-small`` (``onnx/model.onnx``) in the Hugging Face cache,
   else downloaded with huggingface_hub (progress in the log), then prepared. No torch needed;
4. where torch is installed: the checkpoint ``depth-anything/Depth-Anything-V2-Small-hf``
   (Hugging Face cache, models folders, or a download) exported by depth_ros.inference.export.

Nothing found raises :class:`ModelUnavailable`, one line naming the model, every place looked
in, and the command that fixes it. Nothing here ever builds an untrained network.
"""
from __future__ import annotations

from dataclasses import dataclass
import logging
import os
from typing import Dict, List, Optional, Tuple

from depth_ros.core.preprocess import check_input_size, DEFAULT_SIZE
from depth_ros.inference import hub, onnx_prepare

LOG = logging.getLogger('depth_ros.inference.default_model')

DEFAULT_REPO = 'onnx-community/depth-anything-v2-small'
DEFAULT_FILE = 'onnx/model.onnx'
CHECKPOINT_REPO = 'depth-anything/Depth-Anything-V2-Small-hf'
ENV_MODELS_DIR = 'DEPTH_ROS_MODELS'
SETUP_COMMAND = 'depth-ros model setup'
FIX = 'run `{}`'.format(SETUP_COMMAND)
AUTO = ('', 'auto')


class ModelUnavailable(RuntimeError):
    """No copy of the model anywhere it may be; the message is one line (places and the fix)."""

    def __init__(self, model: str, places: List[str], fix: str):
        self.model = model
        self.places = list(places)
        self.fix = fix
        super(ModelUnavailable, self).__init__(
            'no {} on this machine: looked in {}; fix: {}'.format(
                model, '; '.join(self.places), fix))


@dataclass(repr=False)
class Found:
    """
    Where the model came from.

    :param kind: 'engine' (a TensorRT engine in the cache) or 'onnx' (ready for ``profile``).
    :param where: the step that found it, for the log ('engine cache', 'prepared ONNX on
        disk', 'Hugging Face cache', 'downloaded', 'checkpoint export').
    """

    kind: str
    path: str
    where: str
    model_id: str
    source_sha256: Optional[str] = None
    source: Optional[str] = None
    prepared: Optional[object] = None     # onnx_prepare.Prepared when prepared now

    def __repr__(self) -> str:
        return 'Found({!r}, {!r}, {!r})'.format(self.kind, self.path, self.where)


def models_dirs() -> List[str]:
    """
    Return the models folders searched for prepared files and checkpoints (existing ones).

    ``$DEPTH_ROS_MODELS``, the ``models/`` folder of a source checkout of depth_ros (when the
    package runs from one), and ``./models``.
    """
    import depth_ros

    candidates = [os.environ.get(ENV_MODELS_DIR, ''),
                  os.path.join(os.path.dirname(os.path.dirname(
                      os.path.abspath(depth_ros.__file__))), 'models'),
                  os.path.abspath('models')]
    out = []
    for folder in candidates:
        if folder and os.path.isdir(folder) and os.path.abspath(folder) not in out:
            out.append(os.path.abspath(folder))
    return out


def find_prepared(folders: List[str], model_id: str, input_size: Tuple[int, int],
                  profile: str, source_sha256: Optional[str] = None) -> Optional[str]:
    """
    Newest prepared file of ``model_id`` for this size and profile in ``folders``, or None.

    Only onnx_prepare's files count (their metadata says prepared_by depth_ros, the model id,
    size and profile), never an untrained export. With ``source_sha256``, only files prepared
    from that source.
    """
    suffix = '-{}x{}-{}.onnx'.format(input_size[0], input_size[1],
                                     onnx_prepare.PROFILE_SUFFIX[profile])
    found = []
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            path = os.path.join(folder, name)
            if not name.endswith(suffix) or not os.path.isfile(path):
                continue
            meta = onnx_prepare.read_prepared_metadata(path)
            if meta.get('model_id') == model_id and onnx_prepare.is_prepared(
                    path, source_sha256, input_size, profile, meta):
                found.append((os.path.getmtime(path), path))
    return max(found)[1] if found else None


def find_engine(engine_cache_dir: Optional[str], model_id: str, runtime: Dict[str, str],
                input_size: Tuple[int, int], precision: str,
                source_sha256: Optional[str] = None) -> Optional[str]:
    """
    Return the newest cached engine of ``model_id`` for this GPU, TensorRT, size and precision.

    With ``source_sha256``, only an engine built from that copy of the model. None when there
    is none; records that do not parse are skipped.
    """
    from depth_ros.inference.tensorrt.cache import compare_key, ENGINE_SUFFIX, EngineCache, \
        EngineCacheError

    cache = EngineCache(engine_cache_dir)
    if not os.path.isdir(cache.cache_dir):
        return None
    wanted = dict(runtime)
    wanted.update({'input_shape': [1, 3, input_size[1], input_size[0]],
                   'precision': precision, 'dla_core': None})
    found = []
    for name in os.listdir(cache.cache_dir):
        if not name.endswith(ENGINE_SUFFIX):
            continue
        path = os.path.join(cache.cache_dir, name)
        try:
            record = cache.read_record(path)
        except EngineCacheError as exc:
            LOG.debug('skipping %s: %s', path, exc)
            continue
        if record.get('model_id') != model_id or compare_key(record['key'], wanted):
            continue
        if source_sha256 is not None and record.get('source_sha256') != source_sha256:
            LOG.info('not using engine %s: built from another copy of %s (sha256 %s..., the '
                     'one on disk is %s...)', path, model_id,
                     str(record.get('source_sha256'))[:12], source_sha256[:12])
            continue
        found.append((os.path.getmtime(path), path))
    return max(found)[1] if found else None


class DefaultModelResolver(object):
    """
    Find (and prepare) the default model, or another ONNX repo's ``onnx/model.onnx``.

    :param model_id: hub repo of the ONNX file (default: onnx-community/depth-anything-v2-small).
    :param input_size: (width, height), multiples of 14.
    :param profile: onnx_prepare profile of the ONNX the backend needs.
    :param cache_dir: depth_ros cache (prepared files in its ``onnx/``); None: the default.
    :param hub_cache_dir: Hugging Face cache; None: huggingface_hub's (HF_HUB_CACHE).
    :param folders: models folders; None: :func:`models_dirs`.
    :param allow_download: try the hub when nothing local is found (HF_HUB_OFFLINE is always
        honoured).
    :param allow_export: try the checkpoint + export step where torch is installed.
    :param fix: what the error says to do ('run `<command>`').
    :param checkpoint_variants: the variants the checkpoint step takes (ViT-S, the default
        model's; tests pass the tiny test architecture).
    """

    def __init__(self, model_id: str = DEFAULT_REPO, filename: str = DEFAULT_FILE,
                 input_size: Tuple[int, int] = DEFAULT_SIZE, profile: str = 'default',
                 cache_dir: Optional[str] = None, hub_cache_dir: Optional[str] = None,
                 folders: Optional[List[str]] = None, allow_download: bool = True,
                 allow_export: bool = True, timeout_s: float = hub.CONNECT_TIMEOUT_S,
                 fix: str = FIX, checkpoint_variants: Tuple[str, ...] = ('vits',)):
        self.model_id = model_id
        self.filename = filename
        self.input_size = check_input_size(*input_size)
        self.profile = onnx_prepare.check_profile(profile)
        self.cache_dir = cache_dir or onnx_prepare.default_cache_dir()
        self.hub_cache_dir = hub_cache_dir
        self.folders = [onnx_prepare.prepared_dir(self.cache_dir)] + list(
            models_dirs() if folders is None else folders)
        self.allow_download = allow_download
        self.allow_export = allow_export
        self.timeout_s = timeout_s
        self.fix = fix
        self.checkpoint_variants = tuple(checkpoint_variants)
        self.places = []  # type: List[str]
        self._hub_file = None
        self._hub_checked = False
        self._hub_sha = None

    # -- the steps --------------------------------------------------------------------------
    def hub_file(self) -> Optional[str]:
        """Return the model's file in the Hugging Face cache (looked up once), or None."""
        if not self._hub_checked:
            self._hub_checked = True
            self._hub_file = hub.cached_file(self.model_id, self.filename, self.hub_cache_dir)
        return self._hub_file

    def local_source_sha256(self) -> Optional[str]:
        """Return the sha256 of the Hugging Face cache's copy (hashed once), or None."""
        from depth_ros.util import file_sha256
        path = self.hub_file()
        if path and self._hub_sha is None:
            self._hub_sha = file_sha256(path)
        return self._hub_sha if path else None

    def engine(self, runtime: Dict[str, str], engine_cache_dir: Optional[str],
               precision: str) -> Optional[Found]:
        """Step 1: a matching engine of this model in the engine cache."""
        from depth_ros.inference.tensorrt.cache import EngineCache
        cache_dir = EngineCache(engine_cache_dir).cache_dir
        self.places.append('the engine cache {} ({} {} engines for TensorRT {} on {})'.format(
            cache_dir, precision, '{}x{}'.format(*self.input_size), runtime['tensorrt_version'],
            runtime['gpu_name']))
        sha = self.local_source_sha256()
        path = find_engine(engine_cache_dir, self.model_id, runtime, self.input_size, precision,
                           sha)
        if path is None:
            return None
        return Found('engine', path, 'engine cache', self.model_id, sha)

    def prepared(self) -> Optional[Found]:
        """Step 2: a prepared file on disk (of the Hugging Face cache's copy, if there is one)."""
        self.places.append('prepared ONNX files ({}x{}, for {}) in {}'.format(
            self.input_size[0], self.input_size[1], onnx_prepare.PROFILE_TEXT[self.profile],
            ', '.join(self.folders)))
        sha = self.local_source_sha256()
        path = find_prepared(self.folders, self.model_id, self.input_size, self.profile, sha)
        if path is None:
            return None
        meta = onnx_prepare.read_prepared_metadata(path)
        return Found('onnx', path, 'prepared ONNX on disk', self.model_id,
                     meta.get('source_sha256'), meta.get('source'))

    def _prepare(self, source: str, where: str) -> Found:
        from depth_ros.util import file_sha256
        sha = self.local_source_sha256() if source == self.hub_file() else file_sha256(source)
        done = onnx_prepare.ensure_prepared(
            source, self.input_size, self.profile, cache_dir=self.cache_dir,
            label=self.model_id, source_sha256=sha,
            metadata={'model_id': self.model_id, 'source_file': self.filename})
        return Found('onnx', done.path, where, self.model_id, sha, source, done)

    def hub_cache(self) -> Optional[Found]:
        """Step 3a: the Hugging Face cache's copy, prepared (once) for the profile and size."""
        self.places.append('the Hugging Face cache {} ({} {})'.format(
            hub.hub_cache_dir(self.hub_cache_dir), self.model_id, self.filename))
        path = self.hub_file()
        return self._prepare(path, 'Hugging Face cache') if path else None

    def download(self) -> Optional[Found]:
        """Step 3b: download with huggingface_hub, then prepare."""
        if not self.allow_download:
            self.places.append('the hub (downloads off)')
            return None
        try:
            path = hub.download_file(self.model_id, self.filename, self.hub_cache_dir,
                                     self.timeout_s)
        except (hub.HubUnavailable, ImportError) as exc:
            self.places.append('the hub ({})'.format(str(exc).split(': ', 1)[-1]))
            return None
        self._hub_file, self._hub_checked, self._hub_sha = path, True, None
        return self._prepare(path, 'downloaded from {}'.format(hub.endpoint()))

    def checkpoint_export(self) -> Optional[Found]:
        """Step 4: the PyTorch checkpoint exported by depth_ros (where torch is installed)."""
        if not self.allow_export or self.model_id != DEFAULT_REPO:
            return None
        import importlib.util
        # Only asked whether they are installed: importing torch takes seconds, and the
        # offline case must answer in seconds.
        if importlib.util.find_spec('torch') is None or \
                importlib.util.find_spec('transformers') is None:
            self.places.append('the checkpoint {} (torch/transformers not installed, so it '
                               'cannot be exported here)'.format(CHECKPOINT_REPO))
            return None
        from depth_ros.inference import checkpoints, export, model_store
        from depth_ros.util import file_sha256
        candidates = [hub.find_cached(CHECKPOINT_REPO, self.hub_cache_dir)]
        for folder in self.folders[1:]:
            candidates.extend(model_store.local_vits_candidates(folder))
        source = next((c for c in candidates if c and os.path.exists(c)), None)
        if source is None:
            try:
                source = hub.download(CHECKPOINT_REPO, cache_dir=self.hub_cache_dir,
                                      timeout_s=self.timeout_s) if self.allow_download else None
            except hub.HubUnavailable as exc:
                LOG.debug('checkpoint download: %s', exc)
            if source is None:
                self.places.append('the checkpoint {} (Hugging Face cache, {}; not '
                                   'downloadable)'.format(CHECKPOINT_REPO,
                                                          ', '.join(self.folders[1:]) or
                                                          'no models folder'))
                return None
        opset = 16 if self.profile == 'tensorrt8.5' else export.DEFAULT_OPSET
        weights = checkpoints.weights_file(source)
        sha = file_sha256(weights) if weights else None
        cached = [model_store.cached_onnx_path(self.cache_dir, v, sha, self.input_size, opset)
                  for v in self.checkpoint_variants] if sha else []
        path = next((p for p in cached if os.path.isfile(p)), None)
        if path is None:
            net, info = checkpoints.load_checkpoint(source, cache_dir=self.hub_cache_dir)
            if info['variant'] not in self.checkpoint_variants:
                self.places.append('the checkpoint {} ({} holds {}, not ViT-S)'.format(
                    CHECKPOINT_REPO, source, info['variant']))
                return None
            sha = info['sha256']
            path = model_store.cached_onnx_path(self.cache_dir, info['variant'], sha,
                                                self.input_size, opset)
            meta = export.checkpoint_metadata(info)
            meta['target'] = 'tensorrt8.5' if opset == 16 else 'onnxruntime'
            export.export_onnx(net, path, input_size=self.input_size, opset=opset,
                               metadata=meta, show_progress=False)
        return Found('onnx', path, 'checkpoint export', CHECKPOINT_REPO, sha, source)

    # -- the order ---------------------------------------------------------------------------
    def resolve(self, runtime: Optional[Dict[str, str]] = None,
                engine_cache_dir: Optional[str] = None, precision: str = 'fp16') -> Found:
        """
        Run the steps in order; ``runtime`` (gpu, TensorRT) enables the engine step.

        :raises ModelUnavailable: nothing found (one line).
        """
        self.places = []
        steps = [self.prepared, self.hub_cache, self.download, self.checkpoint_export]
        if runtime is not None:
            found = self.engine(runtime, engine_cache_dir, precision)
            if found is not None:
                return found
        for step in steps:
            found = step()
            if found is not None:
                return found
        name = '{} ({})'.format(self.model_id, self.filename)
        if self.model_id == DEFAULT_REPO:
            name = 'Depth Anything V2 Small model ({}, {})'.format(self.model_id, self.filename)
        raise ModelUnavailable(name, self.places, self.fix)
