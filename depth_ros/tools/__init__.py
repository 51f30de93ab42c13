"""
Offline tools behind the thin `depth-ros` commands: evaluation, benchmark, bag processing.

They import numpy and OpenCV at the top; matplotlib, torch, rosbags and the rest lazily.
"""
from __future__ import annotations

import json
import os
from typing import Dict


def write_reports(out_dir: str, markdown_name: str, markdown: str, json_name: str, data,
                  plot_name: str, **json_options) -> Dict[str, str]:
    """
    Create ``out_dir`` and write a Markdown table and a JSON file into it.

    :param json_options: passed to ``json.dump`` (``indent=2`` unless given).
    :returns: {'markdown', 'json', 'plot'} -> paths; the caller draws the plot.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {'markdown': os.path.join(out_dir, markdown_name),
             'json': os.path.join(out_dir, json_name),
             'plot': os.path.join(out_dir, plot_name)}
    with open(paths['markdown'], 'w') as f:
        f.write(markdown)
    json_options.setdefault('indent', 2)
    with open(paths['json'], 'w') as f:
        json.dump(data, f, **json_options)
    return paths
