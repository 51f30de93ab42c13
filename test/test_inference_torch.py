"""
Depth Anything V2 in PyTorch: configs, official .pth mapping, HF folders, the torch backend.

Every model here has random (untrained) weights; outputs are compared with each other, never
presented as depth.
"""
import json

import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')

from depth_ros.core.preprocess import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402,I100
from depth_ros.inference import checkpoints, load_depth_model, torch_model  # noqa: E402,I100

torch.set_num_threads(1)

TINY = torch_model.VARIANTS['tiny']


def official_state_dict(dim, depth, neck, features, head=32, positions=1370, seed=0,
                        device='cpu'):
    """
    Write a state dict in the layout of github.com/DepthAnything/Depth-Anything-V2.

    Written from the official modules (depth_anything_v2/dpt.py, dinov2.py, util/blocks.py),
    not derived from the transformers model: DINOv2 with fused qkv and LayerScale 'gamma',
    DPTHead with projects / resize_layers / scratch.layerN_rn / scratch.refinenetN
    (out_conv, resConfUnit1/2.conv1/2) / scratch.output_conv1 / output_conv2.{0,2}.
    """
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def t(name, *shape):
        if device == 'meta':
            sd[name] = torch.empty(*shape, device='meta')
        else:
            sd[name] = torch.randn(*shape, generator=g)

    t('pretrained.cls_token', 1, 1, dim)
    t('pretrained.pos_embed', 1, positions, dim)
    t('pretrained.mask_token', 1, dim)
    t('pretrained.patch_embed.proj.weight', dim, 3, 14, 14)
    t('pretrained.patch_embed.proj.bias', dim)
    for i in range(depth):
        b = 'pretrained.blocks.%d.' % i
        t(b + 'norm1.weight', dim)
        t(b + 'norm1.bias', dim)
        t(b + 'attn.qkv.weight', 3 * dim, dim)
        t(b + 'attn.qkv.bias', 3 * dim)
        t(b + 'attn.proj.weight', dim, dim)
        t(b + 'attn.proj.bias', dim)
        t(b + 'ls1.gamma', dim)
        t(b + 'norm2.weight', dim)
        t(b + 'norm2.bias', dim)
        t(b + 'mlp.fc1.weight', 4 * dim, dim)
        t(b + 'mlp.fc1.bias', 4 * dim)
        t(b + 'mlp.fc2.weight', dim, 4 * dim)
        t(b + 'mlp.fc2.bias', dim)
        t(b + 'ls2.gamma', dim)
    t('pretrained.norm.weight', dim)
    t('pretrained.norm.bias', dim)
    for i, n in enumerate(neck):
        t('depth_head.projects.%d.weight' % i, n, dim, 1, 1)
        t('depth_head.projects.%d.bias' % i, n)
    t('depth_head.resize_layers.0.weight', neck[0], neck[0], 4, 4)  # ConvTranspose2d x4
    t('depth_head.resize_layers.0.bias', neck[0])
    t('depth_head.resize_layers.1.weight', neck[1], neck[1], 2, 2)  # ConvTranspose2d x2
    t('depth_head.resize_layers.1.bias', neck[1])
    t('depth_head.resize_layers.3.weight', neck[3], neck[3], 3, 3)  # Conv2d stride 2
    t('depth_head.resize_layers.3.bias', neck[3])
    for i, n in enumerate(neck):
        t('depth_head.scratch.layer%d_rn.weight' % (i + 1), features, n, 3, 3)
    for k in (1, 2, 3, 4):
        r = 'depth_head.scratch.refinenet%d.' % k
        t(r + 'out_conv.weight', features, features, 1, 1)
        t(r + 'out_conv.bias', features)
        for u in (1, 2):
            for c in (1, 2):
                t(r + 'resConfUnit%d.conv%d.weight' % (u, c), features, features, 3, 3)
                t(r + 'resConfUnit%d.conv%d.bias' % (u, c), features)
    t('depth_head.scratch.output_conv1.weight', features // 2, features, 3, 3)
    t('depth_head.scratch.output_conv1.bias', features // 2)
    t('depth_head.scratch.output_conv2.0.weight', head, features // 2, 3, 3)
    t('depth_head.scratch.output_conv2.0.bias', head)
    t('depth_head.scratch.output_conv2.2.weight', 1, head, 1, 1)
    t('depth_head.scratch.output_conv2.2.bias', 1)
    return sd


def tiny_official(seed=0):
    return official_state_dict(TINY['hidden_size'], TINY['num_hidden_layers'],
                               TINY['neck_hidden_sizes'], TINY['fusion_hidden_size'], seed=seed)


def attn_names(model):
    keys = model.state_dict().keys()
    if 'backbone.encoder.layer.0.attention.q_proj.weight' in keys:
        return 'attention.q_proj', 'attention.k_proj', 'attention.v_proj', 'attention.o_proj'
    return ('attention.attention.query', 'attention.attention.key',
            'attention.attention.value', 'attention.output.dense')


# ------------------------------------------------------------------------------------------
# Configs


@pytest.mark.parametrize('variant, hidden, layers, heads, taps, neck, fusion', [
    ('vits', 384, 12, 6, [3, 6, 9, 12], [48, 96, 192, 384], 64),
    ('vitb', 768, 12, 12, [3, 6, 9, 12], [96, 192, 384, 768], 128),
    ('vitl', 1024, 24, 16, [5, 12, 18, 24], [256, 512, 1024, 1024], 256),
])
def test_configs_equal_the_official_checkpoints(
        variant, hidden, layers, heads, taps, neck, fusion):
    # Values of depth-anything/Depth-Anything-V2-{Small,Base,Large}-hf config.json.
    c = torch_model.make_config(variant)
    b = c.backbone_config
    got = (b.hidden_size, b.num_hidden_layers, b.num_attention_heads, list(b.out_indices),
           list(c.neck_hidden_sizes), c.fusion_hidden_size)
    want = (hidden, layers, heads, taps, neck, fusion)
    assert got == want, 'expected {}, received {}'.format(want, got)
    got = (c.reassemble_hidden_size, list(c.reassemble_factors), c.head_hidden_size,
           c.depth_estimation_type, c.patch_size, b.patch_size, b.image_size, b.mlp_ratio,
           b.layerscale_value, b.apply_layernorm, b.reshape_hidden_states, b.use_swiglu_ffn)
    want = (hidden, [4, 2, 1, 0.5], 32, 'relative', 14, 14, 518, 4, 1.0, True, False, False)
    assert got == want, 'expected {}, received {}'.format(want, got)
    assert torch_model.variant_of_config(c) == variant


def test_official_tap_indices_are_hidden_states_one_later():
    # The official model takes block outputs [2,5,8,11] (ViT-S/B) and [4,11,17,23] (ViT-L),
    # counted from 0; transformers' hidden_states[0] is the embedding, so +1.
    official = {'vits': [2, 5, 8, 11], 'vitb': [2, 5, 8, 11], 'vitl': [4, 11, 17, 23]}
    for v, blocks in official.items():
        want = [i + 1 for i in blocks]
        got = torch_model.VARIANTS[v]['out_indices']
        assert got == want, '{}: expected {}, received {}'.format(v, want, got)


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match=r"`variant` must be one of tiny, vitb, vitl, vits, "
                                         r"got 'vitx'"):
        torch_model.make_config('vitx')


def test_build_model_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = torch_model.build_model('tiny', seed=7)
    after = torch.rand(1)
    b = torch_model.build_model('tiny', seed=7)
    c = torch_model.build_model('tiny', seed=8)
    assert torch.equal(before, after), 'build_model(seed=...) must not consume the global RNG'
    assert checkpoints.state_dict_hash(a) == checkpoints.state_dict_hash(b)
    assert checkpoints.state_dict_hash(a) != checkpoints.state_dict_hash(c)
    assert not a.training


def test_vits_parameter_count_is_that_of_the_released_small_model():
    # Depth-Anything-V2-Small has 24.8M parameters (model card: 24.8M).
    model = torch_model.build_model('vits', seed=0)
    n = sum(p.numel() for p in model.parameters())
    assert 24.5e6 < n < 25.1e6, 'expected about 24.8M parameters, received {}'.format(n)


# ------------------------------------------------------------------------------------------
# Official .pth


def test_key_map_known_pairs():
    # Checked by hand against dpt.py (refinenet4 is the first fusion, on the deepest features)
    # and output_conv2 = Sequential(Conv, ReLU, Conv, ReLU, Identity).
    model = torch_model.build_model('tiny', seed=0)
    m = checkpoints.official_key_map(4, model.state_dict().keys())
    _, _, _, o = attn_names(model)
    pairs = {
        'depth_head.scratch.refinenet4.out_conv.weight':
            'neck.fusion_stage.layers.0.projection.weight',
        'depth_head.scratch.refinenet1.resConfUnit2.conv1.bias':
            'neck.fusion_stage.layers.3.residual_layer2.convolution1.bias',
        'depth_head.scratch.refinenet3.resConfUnit1.conv2.weight':
            'neck.fusion_stage.layers.1.residual_layer1.convolution2.weight',
        'depth_head.scratch.output_conv2.0.weight': 'head.conv2.weight',
        'depth_head.scratch.output_conv2.2.bias': 'head.conv3.bias',
        'depth_head.scratch.layer2_rn.weight': 'neck.convs.1.weight',
        'depth_head.resize_layers.3.weight': 'neck.reassemble_stage.layers.3.resize.weight',
        'depth_head.projects.0.bias': 'neck.reassemble_stage.layers.0.projection.bias',
        'pretrained.blocks.3.ls2.gamma': 'backbone.encoder.layer.3.layer_scale2.lambda1',
        'pretrained.blocks.0.attn.proj.weight': 'backbone.encoder.layer.0.' + o + '.weight',
        'pretrained.pos_embed': 'backbone.embeddings.position_embeddings',
        'pretrained.norm.bias': 'backbone.layernorm.bias',
        'pretrained.patch_embed.proj.weight':
            'backbone.embeddings.patch_embeddings.projection.weight',
    }
    for src, dst in pairs.items():
        assert m.get(src) == dst, '{}: expected {}, received {}'.format(src, dst, m.get(src))
    assert 'depth_head.resize_layers.2.weight' not in m  # an Identity in the official head


def save_pth(sd, path):
    torch.save(sd, str(path))
    return str(path)


def test_official_pth_loads_every_tensor_where_it_belongs(tmp_path):
    sd = tiny_official(seed=1)
    path = save_pth(sd, tmp_path / 'depth_anything_v2_tiny.pth')
    model, variant = checkpoints.load_official_pth(path)
    assert variant == 'tiny'
    got = model.state_dict()
    q, k, v, o = attn_names(model)
    d = TINY['hidden_size']
    # qkv is split in query, key, value order along the output dimension.
    for i in range(TINY['num_hidden_layers']):
        qkv_w = sd['pretrained.blocks.%d.attn.qkv.weight' % i]
        qkv_b = sd['pretrained.blocks.%d.attn.qkv.bias' % i]
        for j, name in enumerate((q, k, v)):
            pre = 'backbone.encoder.layer.%d.%s.' % (i, name)
            assert torch.equal(got[pre + 'weight'], qkv_w[j * d:(j + 1) * d]), pre
            assert torch.equal(got[pre + 'bias'], qkv_b[j * d:(j + 1) * d]), pre
    # Every other official tensor lands, unchanged, under its mapped name.
    m = checkpoints.official_key_map(TINY['num_hidden_layers'], got.keys())
    mapped = 0
    for src, value in sd.items():
        if '.attn.qkv.' in src:
            continue
        assert torch.equal(got[m[src]], value), '{} -> {} differs'.format(src, m[src])
        mapped += 1
    # ...and together they are the whole transformers model.
    assert mapped + 6 * TINY['num_hidden_layers'] == len(got), \
        'expected {} tensors, received {}'.format(len(got), mapped + 6 * 4)


def test_official_pth_round_trip_of_all_weights_and_outputs(tmp_path):
    # Write a random transformers model in the official layout (fusing q, k, v back) and load
    # it: every weight and the output must come back identical.
    src = torch_model.build_model('tiny', seed=3)
    sd = src.state_dict()
    q, k, v, o = attn_names(src)
    inverse = {hf: off for off, hf in checkpoints.official_key_map(4, sd.keys()).items()}
    official = {}
    for key, value in sd.items():
        if key in inverse:
            official[inverse[key]] = value.clone()
    for i in range(4):
        pre = 'backbone.encoder.layer.%d.' % i
        for p in ('weight', 'bias'):
            official['pretrained.blocks.%d.attn.qkv.%s' % (i, p)] = torch.cat(
                [sd[pre + n + '.' + p] for n in (q, k, v)], dim=0)
    assert set(official) == set(tiny_official()), 'the inverse map must give the official keys'
    model, _ = checkpoints.load_official_pth(save_pth(official, tmp_path / 'rt.pth'))
    for key, value in sd.items():
        assert torch.equal(model.state_dict()[key], value), key
    x = torch.randn(1, 3, 42, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = src(pixel_values=x).predicted_depth
        b = model(pixel_values=x).predicted_depth
    assert torch.equal(a, b)


@pytest.mark.parametrize('variant', ['vits', 'vitb', 'vitl'])
def test_variant_is_inferred_from_official_shapes(variant):
    spec = torch_model.VARIANTS[variant]
    sd = official_state_dict(spec['hidden_size'], spec['num_hidden_layers'],
                             spec['neck_hidden_sizes'], spec['fusion_hidden_size'],
                             device='meta')
    assert checkpoints.infer_official_variant(sd, 'x.pth') == variant


def test_pth_with_a_missing_key_names_file_and_key(tmp_path):
    sd = tiny_official()
    del sd['depth_head.scratch.refinenet2.out_conv.bias']
    path = save_pth(sd, tmp_path / 'missing.pth')
    with pytest.raises(ValueError) as err:
        checkpoints.load_official_pth(path)
    msg = str(err.value)
    assert path in msg and '1 missing key(s)' in msg \
        and 'neck.fusion_stage.layers.2.projection.bias' in msg, msg


def test_pth_with_an_unexpected_key_names_file_and_key(tmp_path):
    sd = tiny_official()
    sd['depth_head.scratch.refinenet5.out_conv.bias'] = torch.zeros(16)
    path = save_pth(sd, tmp_path / 'extra.pth')
    with pytest.raises(ValueError) as err:
        checkpoints.load_official_pth(path)
    msg = str(err.value)
    assert path in msg and '1 unexpected key(s)' in msg and 'refinenet5' in msg, msg


def test_pth_of_another_architecture_is_refused(tmp_path):
    sd = official_state_dict(48, 3, [8, 16, 32, 32], 16)  # no such variant
    path = save_pth(sd, tmp_path / 'other.pth')
    with pytest.raises(ValueError, match='unknown Depth Anything V2 architecture') as err:
        checkpoints.load_official_pth(path)
    assert path in str(err.value)
    path = save_pth({'encoder.weight': torch.zeros(2)}, tmp_path / 'notda.pth')
    with pytest.raises(ValueError, match='not an official Depth Anything V2 checkpoint') as err:
        checkpoints.load_official_pth(path)
    assert path in str(err.value)


class Payload(object):
    """Something weights_only=True must refuse to unpickle."""

    def __init__(self):
        self.x = 1


def test_pth_holding_code_objects_is_refused_not_unpickled(tmp_path):
    path = str(tmp_path / 'pickle.pth')
    torch.save({'pretrained.pos_embed': Payload()}, path)
    with pytest.raises(ValueError, match='cannot read as a PyTorch weights file') as err:
        checkpoints.load_official_pth(path)
    assert str(err.value) == ('{}: cannot read as a PyTorch weights file: it holds pickled '
                              'objects other than tensors, which are refused '
                              '(torch.load(weights_only=True))'.format(path))
    assert 'weights_only=False' not in str(err.value)


def test_corrupt_and_missing_pth(tmp_path):
    path = tmp_path / 'corrupt.pth'
    path.write_bytes(b'\x00not a zip file' * 10)
    with pytest.raises(ValueError, match='cannot read as a PyTorch weights file') as err:
        checkpoints.load_official_pth(str(path))
    assert str(path) in str(err.value)
    with pytest.raises(FileNotFoundError, match='checkpoint not found: .*nope.pth'):
        load_depth_model(str(tmp_path / 'nope.pth'), backend='torch')


# ------------------------------------------------------------------------------------------
# Hugging Face folders


def test_hf_folder_round_trip(tmp_path):
    src = torch_model.build_model('tiny', seed=5)
    src.save_pretrained(str(tmp_path))
    assert (tmp_path / 'model.safetensors').is_file() and (tmp_path / 'config.json').is_file()
    model, info = checkpoints.load_checkpoint(str(tmp_path))
    assert info['variant'] == 'tiny' and info['path'] == str(tmp_path)
    import hashlib
    want = hashlib.sha256((tmp_path / 'model.safetensors').read_bytes()).hexdigest()
    assert info['sha256'] == want, 'expected {}, received {}'.format(want, info['sha256'])
    for key, value in src.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_hf_folder_errors_name_the_file(tmp_path):
    src = torch_model.build_model('tiny', seed=5)
    src.save_pretrained(str(tmp_path / 'ok'))
    # Wrong architecture in config.json.
    wrong = tmp_path / 'wrong'
    wrong.mkdir()
    (wrong / 'config.json').write_text(json.dumps({'model_type': 'bert', 'hidden_size': 8}))
    (wrong / 'model.safetensors').write_bytes((tmp_path / 'ok' / 'model.safetensors')
                                              .read_bytes())
    with pytest.raises(ValueError) as err:
        checkpoints.load_hf_folder(str(wrong))
    assert str(wrong / 'config.json') in str(err.value), str(err.value)
    # Truncated weights.
    bad = tmp_path / 'bad'
    bad.mkdir()
    (bad / 'config.json').write_text((tmp_path / 'ok' / 'config.json').read_text())
    (bad / 'model.safetensors').write_bytes(b'\x08\x00\x00\x00\x00\x00\x00\x00{}garbage')
    with pytest.raises(ValueError) as err:
        load_depth_model(str(bad), backend='torch')
    assert str(bad / 'model.safetensors') in str(err.value), str(err.value)
    # Weights of another size than config.json says.
    other = tmp_path / 'other'
    torch_model.build_model('tiny', seed=5).save_pretrained(str(other))
    cfg = json.loads((other / 'config.json').read_text())
    cfg['fusion_hidden_size'] = 24
    (other / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(ValueError) as err:
        checkpoints.load_hf_folder(str(other))
    assert str(other / 'model.safetensors') in str(err.value), str(err.value)
    # No config / no folder.
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match='no config.json'):
        checkpoints.load_hf_folder(str(empty))
    with pytest.raises(FileNotFoundError, match='checkpoint not found: .*/absent'):
        load_depth_model(str(tmp_path / 'absent'), backend='torch')


# ------------------------------------------------------------------------------------------
# TorchDepthModel and load_depth_model(backend='torch')


def test_torch_predict_matches_an_independent_pipeline():
    import cv2
    model = load_depth_model('tiny', backend='torch', random_weights=True, seed=2,
                             input_size=(70, 42))
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, size=(60, 100, 3), dtype=np.uint8)
    out = model.predict(bgr)
    assert out.shape == (60, 100) and out.dtype == np.float32, (out.shape, out.dtype)
    # Independent: float64 normalisation in RGB, torch forward, torch bilinear upsampling.
    small = cv2.resize(bgr, (70, 42), interpolation=cv2.INTER_CUBIC)
    rgb = small[:, :, ::-1].astype(np.float64) / 255.0
    x = ((rgb - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)[None].astype(np.float32)
    net = torch_model.build_model('tiny', seed=2)
    with torch.no_grad():
        pred = net(pixel_values=torch.from_numpy(x)).predicted_depth  # [1, 42, 70]
        want = torch.nn.functional.interpolate(pred[:, None], size=(60, 100), mode='bilinear',
                                               align_corners=False)[0, 0].numpy()
    err = np.abs(out - want).max() / np.abs(want).max()
    assert err < 1e-4, 'max relative error {} (expected < 1e-4)'.format(err)
    assert model.latency.count == 1 and model.backend == 'torch'


def test_torch_backend_argument_errors():
    with pytest.raises(ValueError, match=r"'vits' is a variant name, not a checkpoint; pass "
                                         r"random_weights=True"):
        load_depth_model('vits', backend='torch')
    with pytest.raises(ValueError, match=r"with random_weights=True, `path_or_id` must be a "
                                         r"variant name .*got 'model.onnx'"):
        load_depth_model('model.onnx', backend='torch', random_weights=True)
    net = torch_model.build_model('tiny', seed=0)
    with pytest.raises(ValueError, match=r"`dtype` must be a torch dtype, got 'float99'"):
        torch_model.TorchDepthModel(net, device='cpu', dtype='float99')
    with pytest.raises(ValueError, match=r"`dtype` must be a floating torch dtype"):
        torch_model.TorchDepthModel(net, device='cpu', dtype=torch.int32)
    with pytest.raises(ValueError, match=r"`device` must be a torch device, got 'gpu0'"):
        torch_model.TorchDepthModel(net, device='gpu0', dtype=torch.float32)
    with pytest.raises(ValueError, match=r'input `width` must be a positive multiple of 14, '
                                         r'got 500'):
        torch_model.TorchDepthModel(net, device='cpu', dtype=torch.float32,
                                    input_size=(500, 294))


def test_unknown_backend_is_named():
    # Listed in the order of the one backend registry (depth_ros.inference.BACKENDS).
    with pytest.raises(ValueError, match=r"`backend` must be one of onnxruntime, tensorrt, "
                                         r"torch, got 'openvino'"):
        load_depth_model('x.onnx', backend='openvino')


def test_torch_dtype_is_the_callers_choice():
    net = torch_model.build_model('tiny', seed=0)
    m = torch_model.TorchDepthModel(net, device='cpu', dtype='float64', input_size=(28, 28))
    assert next(m.model.parameters()).dtype == torch.float64
    out = m.predict(np.zeros((28, 28, 3), np.uint8))
    assert out.dtype == np.float32 and out.shape == (28, 28)


def test_hub_id_offline_fails_fast_and_clearly(tmp_path, monkeypatch):
    # A non-existing 'owner/name' is a hub id; offline, it fails fast with a clear error.
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    from depth_ros.inference.hub import HubUnavailable
    from test_util import forbid_network
    forbid_network(monkeypatch)   # fast: no connection is even tried
    with pytest.raises(HubUnavailable, match='cannot download someone/not-cached-model: '
                                             'HF_HUB_OFFLINE is set'):
        load_depth_model('someone/not-cached-model', backend='torch',
                         cache_dir=str(tmp_path))
