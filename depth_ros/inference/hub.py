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
