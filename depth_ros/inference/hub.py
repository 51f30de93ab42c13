"""
Hugging Face Hub access: offline detection in seconds, cached look-up, download with progress.

Being offline must be found quickly: ``HF_HUB_OFFLINE`` is honoured, and before any download a
TCP connect to the hub endpoint with a short timeout (3 s) decides whether to try at all, so a
machine without internet never waits for a long network time-out.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import time
from typing import Optional, Tuple
from urllib.parse import urlsplit

from depth_ros.util import first_line

LOG = logging.getLogger('depth_ros.inference.hub')

DEFAULT_ENDPOINT = 'https://huggingface.co'
CONNECT_TIMEOUT_S = 3.0
# Only these files are fetched: the weights are read from safetensors, never from pickles.
CHECKPOINT_FILES = ['config.json', 'model.safetensors']

_HUB_ID = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$')
_TRUE = ('1', 'on', 'yes', 'true')


class HubUnavailable(RuntimeError):
    """The hub cannot be used now (offline mode, or the endpoint is unreachable)."""


def looks_like_hub_id(value: str) -> bool:
    """Tell whether ``value`` is an 'owner/name' hub id rather than a local path."""
    return (isinstance(value, str) and bool(_HUB_ID.match(value))
            and not os.path.exists(value) and not value.endswith(('.pth', '.onnx')))


def offline_mode() -> bool:
    """Tell whether HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) asks for no network access."""
    return any(os.environ.get(name, '').strip().lower() in _TRUE
               for name in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE'))


def endpoint() -> str:
    """Return the hub endpoint URL (HF_ENDPOINT, else huggingface.co)."""
    return os.environ.get('HF_ENDPOINT', '').strip() or DEFAULT_ENDPOINT


def check_reachable(timeout_s: float = CONNECT_TIMEOUT_S,
                    url: Optional[str] = None) -> Tuple[bool, str]:
    """
    Try a TCP connection to the hub within ``timeout_s``; return (ok, reason).

    DNS failures and refused connections answer at once; a silent network costs at most
    ``timeout_s``.
    """
    if offline_mode():
        return False, 'HF_HUB_OFFLINE is set'
    parts = urlsplit(url or endpoint())
    host = parts.hostname
    if not host:
        return False, 'bad hub endpoint {!r}'.format(url or endpoint())
    port = parts.port or (443 if parts.scheme == 'https' else 80)
    t0 = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        return False, 'cannot reach {}:{} ({}, after {:.1f} s)'.format(
            host, port, exc.__class__.__name__ if not str(exc) else exc,
            time.monotonic() - t0)
    return True, 'reachable'


def _require_hub():
    try:
        import huggingface_hub  # noqa: F401
    except ImportError as exc:
        raise ImportError('hub downloads need huggingface_hub: install depth_ros[export] '
                          '({})'.format(exc))


def find_cached(repo_id: str, cache_dir: Optional[str] = None) -> Optional[str]:
    """
    Return the cached snapshot folder of ``repo_id`` (config.json + safetensors), or None.

    Never touches the network.
    """
    try:
        _require_hub()
    except ImportError:
        return None
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True,
                                   allow_patterns=CHECKPOINT_FILES)
    except Exception as exc:  # not cached: the hub raises one of several error types
        LOG.debug('%s not in the local hub cache: %s', repo_id, exc)
        return None
    if all(os.path.isfile(os.path.join(folder, f)) for f in CHECKPOINT_FILES):
        return folder
    return None


def download(repo_id: str, cache_dir: Optional[str] = None, revision: Optional[str] = None,
             timeout_s: float = CONNECT_TIMEOUT_S) -> str:
    """
    Return a local folder of a hub checkpoint: cached, else downloaded with progress.

    :raises HubUnavailable: offline mode or unreachable hub, and the checkpoint is not cached.
    :raises ValueError: ``repo_id`` is not an 'owner/name' id.
    """
    if not looks_like_hub_id(repo_id):
        raise ValueError('`repo_id` must look like owner/name, got {!r}'.format(repo_id))
    if revision is None:
        cached = find_cached(repo_id, cache_dir)
        if cached:
            LOG.info('using cached %s: %s', repo_id, cached)
            return cached
    ok, reason = check_reachable(timeout_s)
    if not ok:
        raise HubUnavailable('cannot download {}: {}; it is not in the local cache either '
                             '(put the checkpoint folder or .pth on disk and pass its path)'
                             .format(repo_id, reason))
    _require_hub()
    from huggingface_hub import snapshot_download
    from tqdm.auto import tqdm

    LOG.info('downloading %s from %s', repo_id, endpoint())
    try:
        return snapshot_download(repo_id, cache_dir=cache_dir, revision=revision,
                                 allow_patterns=CHECKPOINT_FILES, tqdm_class=tqdm,
                                 etag_timeout=timeout_s)
    except Exception as exc:
        raise HubUnavailable('cannot download {}: {}'.format(repo_id, first_line(exc)))


# ----------------------------------------------------------------------- single files (ONNX)
def cached_file(repo_id: str, filename: str, cache_dir: Optional[str] = None) -> Optional[str]:
    """
    Return the path of ``filename`` of ``repo_id`` in the local hub cache, or None.

    The revision is what the cache's ``refs/main`` names (huggingface_hub's
    ``try_to_load_from_cache``). Never touches the network; None also when huggingface_hub
    is not installed.
    """
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
    return found if isinstance(found, str) and os.path.isfile(found) else None


def hub_cache_dir(cache_dir: Optional[str] = None) -> str:
    """Return the hub cache folder in use: ``cache_dir``, else huggingface_hub's (HF_HUB_CACHE)."""
    if cache_dir:
        return cache_dir
    try:
        from huggingface_hub import constants
        return constants.HF_HUB_CACHE
    except ImportError:
        home = os.environ.get('HF_HOME') or os.path.join(
            os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'huggingface')
        return os.environ.get('HF_HUB_CACHE') or os.path.join(home, 'hub')


def _partial_bytes(repo_id: str, cache_dir: Optional[str]) -> int:
    """Bytes of the downloads in progress (``*.incomplete`` blobs) of ``repo_id``."""
    folder = os.path.join(hub_cache_dir(cache_dir), 'models--' + repo_id.replace('/', '--'),
                          'blobs')
    total = 0
    try:
        for name in os.listdir(folder):
            if name.endswith('.incomplete'):
                total += os.path.getsize(os.path.join(folder, name))
    except OSError:
        pass
    return total


def _remote_size(repo_id: str, filename: str, timeout_s: float) -> Optional[int]:
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        meta = get_hf_file_metadata(hf_hub_url(repo_id, filename, endpoint=endpoint()),
                                    timeout=timeout_s)
        return int(meta.size) if meta.size else None
    except Exception as exc:  # noqa: B902 - only for the progress lines
        LOG.debug('size of %s/%s unknown: %s', repo_id, filename, exc)
        return None


def download_file(repo_id: str, filename: str, cache_dir: Optional[str] = None,
                  timeout_s: float = CONNECT_TIMEOUT_S, interval_s: float = 10.0) -> str:
    """
    Return a local path of one file of a hub repo: cached, else downloaded.

    The download goes into the hub cache (huggingface_hub's ``hf_hub_download``). While it
    runs, a line with the bytes received, the size and the elapsed time is logged every
    ``interval_s`` (a ROS node has no terminal for a progress bar).

    :raises HubUnavailable: offline mode or unreachable hub, and the file is not cached.
    """
    from depth_ros.util import Heartbeat

    cached = cached_file(repo_id, filename, cache_dir)
    if cached:
        return cached
    ok, reason = check_reachable(timeout_s)
    if not ok:
        raise HubUnavailable('cannot download {} ({}): {}'.format(repo_id, filename, reason))
    _require_hub()
    from huggingface_hub import hf_hub_download

    size = _remote_size(repo_id, filename, timeout_s)
    of = ' of {:.1f} MB'.format(size / 1e6) if size else ''
    LOG.info('downloading %s (%s%s) from %s into the Hugging Face cache %s', repo_id,
             filename, of, endpoint(), hub_cache_dir(cache_dir))

    def beat(elapsed):
        LOG.info('downloading %s: %.1f MB%s, %.0f s elapsed', filename,
                 _partial_bytes(repo_id, cache_dir) / 1e6, of, elapsed)
    try:
        with Heartbeat(beat, interval_s, name='download-progress'):
            path = hf_hub_download(repo_id, filename, cache_dir=cache_dir,
                                   etag_timeout=timeout_s, endpoint=endpoint())
    except Exception as exc:  # noqa: B902 - the hub raises many error types; one line here
        raise HubUnavailable('cannot download {} ({}): {}'.format(
            repo_id, filename, first_line(exc)))
    LOG.info('downloaded %s (%.1f MB)', path, os.path.getsize(path) / 1e6)
    return path
