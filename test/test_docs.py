"""The README and docs/: links that resolve, and the README's figures taken from the code."""
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted(['README.md', 'models/README.md'] + [
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'docs', '*.md'))])
LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')
FENCE = re.compile(r'^(```|~~~).*?^\1', re.M | re.S)


def _text(page):
    with open(os.path.join(ROOT, page), encoding='utf-8') as f:
        return f.read()


def _prose(text):
    """Return the text without fenced code blocks (no links or headings there)."""
    return FENCE.sub('', text)


def slug(heading):
    """Return GitHub's anchor for a heading: lower case, punctuation out, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r'[^\w\- ]', '', text)
    return text.replace(' ', '-')


def anchors(page):
    """Return the anchors of a page's headings (GitHub numbers repeated ones -1, -2, ...)."""
    seen = {}
    out = set()
    for line in _prose(_text(page)).splitlines():
        match = re.match(r'#{1,6} (.*)', line)
        if not match:
            continue
        base = slug(match.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else '{}-{}'.format(base, n))
    return out


def links(page):
    """Yield the relative links of a page as (target file relative to ROOT, anchor or '')."""
    for target in LINK.findall(_prose(_text(page))):
        if re.match(r'[a-z]+:', target):
            continue
        path, _, anchor = target.partition('#')
        if path:
            path = os.path.normpath(os.path.join(os.path.dirname(page), path))
        else:
            path = page
        yield target, path, anchor


def test_slug_follows_github():
    assert slug('`depth-ros eval`: zero-shot accuracy of any backend') == \
        'depth-ros-eval-zero-shot-accuracy-of-any-backend'
    assert slug('3. Build the engine on the Jetson') == '3-build-the-engine-on-the-jetson'
    assert slug('The default model (`model: auto`)') == 'the-default-model-model-auto'


@pytest.mark.parametrize('page', PAGES)
def test_every_link_points_to_a_file_and_anchor_that_exist(page):
    broken = []
    for target, path, anchor in links(page):
        if not os.path.exists(os.path.join(ROOT, path)):
            broken.append('{} (no file {})'.format(target, path))
        elif anchor and path.endswith('.md') and anchor not in anchors(path):
            broken.append('{} (no heading with anchor #{} in {})'.format(target, anchor, path))
    assert not broken, '{} has broken links:\n  {}'.format(page, '\n  '.join(broken))


def test_readme_is_a_front_door():
    lines = _text('README.md').splitlines()
    assert len(lines) <= 200, 'README.md has {} lines; keep it to 200 and move detail to ' \
        'docs/'.format(len(lines))
    readme = '\n'.join(lines)
    # The two set-up commands are Makefile targets, and CI runs the second.
    with open(os.path.join(ROOT, 'Makefile')) as f:
        targets = set(re.findall(r'^([\w-]+):', f.read(), re.M))
    for command in ('make demo', 'make test'):
        assert command in readme and command.split()[1] in targets, command
    with open(os.path.join(ROOT, '.ci', 'run')) as f:
        assert re.search(r'^make test$', f.read(), re.M), '.ci/run must run `make test`'
    # Sections that others fill in keep their markers.
    for marker in ('<!-- accuracy -->', '<!-- composed -->'):
        assert marker in readme, marker


def _parameter_rows():
    """Yield (node, names, defaults) of the README's "Main parameters" table."""
    section = _text('README.md').split('## Main parameters', 1)[1].split('\n## ', 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if len(cells) != 4 or not cells[0].endswith('_node'):
            continue
        names = re.findall(r'`(\w+)`', cells[1])
        defaults = [d.strip().strip('`') for d in re.split(r'[,/]', cells[2])]
        yield cells[0], names, defaults


def test_readme_parameter_defaults_are_the_nodes():
    from depth_ros.nodes_core import config
    specs = {'zed_node': config.ZED_PARAMS, 'depth_node': config.DEPTH_PARAMS,
             'alignment_node': config.ALIGNMENT_PARAMS}
    rows = list(_parameter_rows())
    assert len(rows) >= 8, rows
    for node, names, defaults in rows:
        params = {p.name: p for p in specs[node]}
        assert len(names) == len(defaults), (node, names, defaults)
        for name, text in zip(names, defaults):
            assert name in params, 'README: {} has no parameter `{}`'.format(node, name)
            default = params[name].default
            if isinstance(default, str):
                shown = text.strip('"')
            elif isinstance(default, bool):     # YAML's spelling, as config/zed_depth.yaml's
                shown = {'true': True, 'false': False}.get(text.lower(), text)
            else:
                shown = type(default)(float(text))
            assert shown == default, 'README: {} `{}` defaults to {!r}, not {!r}'.format(
                node, name, default, text)
