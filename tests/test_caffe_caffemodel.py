"""Reading .caffemodel files: every format, checked against independent decoders/encoders
(the protobuf library built from caffe.proto's field numbers, OpenCV's Caffe importer), and
the error paths."""
import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from preddiff.caffe import load_net, read_caffemodel
from preddiff.caffe.caffemodel import scan_caffemodel
from preddiff.caffe.wire import Builder, FieldReader, encode_varint, read_varint
from preddiff.caffe.writer import random_weights, write_caffemodel
from preddiff.errors import CaffeFormatError
from preddiff.resources import MODELS_DIR

TINY = """name: "tiny"
input: "data" input_dim: 2 input_dim: 3 input_dim: 8 input_dim: 8
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
        inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
LENET = MODELS_DIR / "lenet"


@pytest.fixture
def tiny():
    return load_net(TINY)


@pytest.fixture
def tiny_weights(tiny, rng):
    return random_weights(tiny, rng)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        len(a[k]) == len(b[k]) and all(x.shape == y.shape and np.array_equal(x, y)
                                       for x, y in zip(a[k], b[k])) for k in a)


# --------------------------------------------------------------------------------------------
# The protobuf library as an independent codec: caffe.proto's messages, just the fields used
# --------------------------------------------------------------------------------------------
def _caffe_classes(packed: bool):
    fdp = descriptor_pb2.FileDescriptorProto(name=f"caffe_{packed}.proto",
                                             package=f"caffe{int(packed)}", syntax="proto2")
    pkg = f".caffe{int(packed)}."
    F = descriptor_pb2.FieldDescriptorProto

    def message(name, fields):
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = pkg + type_name
            if fname in ("data", "double_data", "dim"):
                f.options.packed = packed

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BlobShape", [("dim", 1, F.TYPE_INT64, rep, None)])
    message("BlobProto", [
        ("shape", 7, F.TYPE_MESSAGE, opt, "BlobShape"), ("data", 5, F.TYPE_FLOAT, rep, None),
        ("double_data", 8, F.TYPE_DOUBLE, rep, None), ("num", 1, F.TYPE_INT32, opt, None),
        ("channels", 2, F.TYPE_INT32, opt, None), ("height", 3, F.TYPE_INT32, opt, None),
        ("width", 4, F.TYPE_INT32, opt, None)])
    message("LayerParameter", [
        ("name", 1, F.TYPE_STRING, opt, None), ("type", 2, F.TYPE_STRING, opt, None),
        ("bottom", 3, F.TYPE_STRING, rep, None), ("top", 4, F.TYPE_STRING, rep, None),
        ("blobs", 7, F.TYPE_MESSAGE, rep, "BlobProto")])
    message("V0LayerParameter", [
        ("name", 1, F.TYPE_STRING, opt, None), ("type", 2, F.TYPE_STRING, opt, None),
        ("blobs", 50, F.TYPE_MESSAGE, rep, "BlobProto")])
    message("V1LayerParameter", [
        ("layer", 1, F.TYPE_MESSAGE, opt, "V0LayerParameter"),
        ("bottom", 2, F.TYPE_STRING, rep, None), ("top", 3, F.TYPE_STRING, rep, None),
        ("name", 4, F.TYPE_STRING, opt, None), ("type", 5, F.TYPE_INT32, opt, None),
        ("blobs", 6, F.TYPE_MESSAGE, rep, "BlobProto")])
    message("NetParameter", [
        ("name", 1, F.TYPE_STRING, opt, None),
        ("layers", 2, F.TYPE_MESSAGE, rep, "V1LayerParameter"),
        ("input", 3, F.TYPE_STRING, rep, None), ("input_dim", 4, F.TYPE_INT32, rep, None),
        ("layer", 100, F.TYPE_MESSAGE, rep, "LayerParameter")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(pkg[1:] + "NetParameter"))


def test_varint_matches_the_protobuf_spec_example():
    assert encode_varint(150) == b"\x96\x01"
    assert read_varint(memoryview(b"\x96\x01"), 0, 2) == (150, 2)
    assert encode_varint(-1) == b"\xff" * 9 + b"\x01"


def test_writer_output_parses_with_protobuf(tiny, tiny_weights, tmp_path):
    path = write_caffemodel(tiny, tiny_weights, tmp_path / "t.caffemodel", style="layer")
    net = _caffe_classes(packed=True).FromString(path.read_bytes())
    fc = [layer for layer in net.layer if layer.name == "fc"][0]
    assert fc.type == "InnerProduct" and list(fc.blobs[0].shape.dim) == [5, 36]
    np.testing.assert_array_equal(np.array(fc.blobs[0].data, np.float32),
                                  tiny_weights["fc"][0].ravel())


def test_legacy_writer_output_parses_with_protobuf(tiny, tiny_weights, tmp_path):
    path = write_caffemodel(tiny, tiny_weights, tmp_path / "t.caffemodel", style="layers",
                            v0_layers=["conv1"])
    net = _caffe_classes(packed=True).FromString(path.read_bytes())
    fc = [layer for layer in net.layers if layer.name == "fc"][0]
    assert fc.type == 14  # INNER_PRODUCT
    blob = fc.blobs[0]
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 1, 5, 36)  # right-aligned
    conv = [layer for layer in net.layers if layer.layer.name == "conv1"][0]
    assert conv.layer.type == "conv" and len(conv.layer.blobs) == 2 and not conv.blobs


@pytest.mark.parametrize("packed", [True, False])
def test_reads_what_protobuf_writes(tiny, tiny_weights, tmp_path, packed):
    """The unpacked variant has one key per float: it must still be read without a Python
    loop per element (``FieldReader.take_run``)."""
    msg = _caffe_classes(packed)()
    for layer in tiny.layers:
        rec = msg.layer.add(name=layer.name, type=layer.type)
        for array in tiny_weights.get(layer.name, []):
            blob = rec.blobs.add()
            blob.shape.dim.extend(array.shape)
            blob.data.extend(array.ravel().tolist())
    path = tmp_path / "pb.caffemodel"
    path.write_bytes(msg.SerializeToString())
    assert _same(read_caffemodel(path, tiny), tiny_weights)


def test_double_data_is_read_as_float32(tiny, tiny_weights, tmp_path):
    msg = _caffe_classes(True)()
    for name, blobs in tiny_weights.items():
        rec = msg.layers.add(name=name, type=4 if name == "conv1" else 14)
        for array in blobs:
            blob = rec.blobs.add()
            dims = (1,) * (4 - array.ndim) + array.shape  # legacy dims, right-aligned
            blob.num, blob.channels, blob.height, blob.width = dims
            blob.double_data.extend(array.astype(np.float64).ravel().tolist())
    path = tmp_path / "double.caffemodel"
    path.write_bytes(msg.SerializeToString())
    got = read_caffemodel(path, tiny)
    assert all(b.dtype == np.float32 for v in got.values() for b in v)
    assert _same(got, tiny_weights)


def test_unpacked_run_reader_handles_long_runs():
    values = np.arange(100_000, dtype=np.float32)
    data = memoryview(Builder().unpacked(5, values).varint(1, 7).to_bytes())
    reader = FieldReader(data)
    first = next(reader)
    offset, count, stride = reader.take_run(first)
    assert (count, stride) == (100_000, 5)
    got = np.ndarray((count,), "<f4", buffer=data, offset=offset, strides=(stride,))
    np.testing.assert_array_equal(got, values)
    assert next(reader).value == 7


# --------------------------------------------------------------------------------------------
# Formats and matching
# --------------------------------------------------------------------------------------------
def test_real_lenet_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    net = load_net(LENET / "deploy.prototxt")
    weights = read_caffemodel(LENET / "lenet.caffemodel", net)
    assert {k: [b.shape for b in v] for k, v in weights.items()} == {
        "conv1": [(20, 1, 5, 5), (20,)], "conv2": [(50, 20, 5, 5), (50,)],
        "ip1": [(500, 800), (500,)], "ip2": [(10, 500), (10,)]}
    cvnet = cv2.dnn.readNetFromCaffe(str(LENET / "deploy.prototxt"),
                                     str(LENET / "lenet.caffemodel"))
    for name, blobs in weights.items():
        for i, blob in enumerate(blobs):
            np.testing.assert_array_equal(blob.ravel(), cvnet.getParam(name, i).ravel())


def test_real_lenet_training_layers_are_ignored():
    raw = scan_caffemodel(memoryview((LENET / "lenet.caffemodel").read_bytes()))
    assert [layer.type for layer in raw][[r.name for r in raw].index("loss")] == \
        "SoftmaxWithLoss"
    weights = read_caffemodel(LENET / "lenet.caffemodel", load_net(LENET / "deploy.prototxt"))
    assert "loss" not in weights and "mnist" not in weights


@pytest.mark.parametrize("style, v0", [("layer", ()), ("layers", ()), ("layers", ["fc"]),
                                       ("layers", True)])
def test_every_format_round_trips(tiny, tiny_weights, tmp_path, style, v0):
    path = write_caffemodel(tiny, tiny_weights, tmp_path / "t.caffemodel", style=style,
                            v0_layers=v0)
    assert _same(read_caffemodel(path, tiny), tiny_weights)


def test_legacy_blobs_are_reshaped_to_the_true_shape(tiny, tiny_weights, tmp_path):
    path = write_caffemodel(tiny, tiny_weights, tmp_path / "t.caffemodel", style="layers")
    raw = {r.name: r for r in scan_caffemodel(memoryview(path.read_bytes()))}
    assert raw["fc"].blobs[0].legacy == (1, 1, 5, 36)
    assert raw["fc"].blobs[1].legacy == (1, 1, 1, 5)
    got = read_caffemodel(path, tiny)
    assert got["fc"][0].shape == (5, 36) and got["fc"][1].shape == (5,)


def test_without_a_net_every_layer_is_returned(tiny, tiny_weights, tmp_path):
    path = write_caffemodel(tiny, tiny_weights, tmp_path / "t.caffemodel", style="layers")
    got = read_caffemodel(path)
    assert {"conv1", "fc", "loss1/conv", "loss1/fc"} == set(got)
    assert got["fc"][0].shape == (5, 36)  # leading legacy 1s dropped


def test_extra_layers_are_ignored_with_a_net(tiny, tiny_weights, tmp_path):
    path = write_caffemodel(tiny, tiny_weights, tmp_path / "t.caffemodel", extra_layers=True)
    assert set(read_caffemodel(path, tiny)) == {"conv1", "fc"}


def test_arrays_are_writable_and_aligned(tiny, tiny_weights, tmp_path):
    path = write_caffemodel(tiny, tiny_weights, tmp_path / "t.caffemodel")
    blob = read_caffemodel(path, tiny)["conv1"][0]
    assert blob.flags.writeable and blob.flags.aligned and blob.dtype == np.float32


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
def test_empty_file(tmp_path, tiny):
    path = tmp_path / "empty.caffemodel"
    path.write_bytes(b"")
    with pytest.raises(CaffeFormatError, match=r"empty.caffemodel is empty"):
        read_caffemodel(path, tiny)


def test_missing_file(tmp_path):
    with pytest.raises(CaffeFormatError, match="caffemodel not found: .*nope.caffemodel"):
        read_caffemodel(tmp_path / "nope.caffemodel")


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_file(tiny, tiny_weights, tmp_path, keep):
    path = write_caffemodel(tiny, tiny_weights, tmp_path / "t.caffemodel")
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(CaffeFormatError, match=r"t\.caffemodel.*truncated or corrupt"):
        read_caffemodel(path, tiny)


def test_truncated_at_a_layer_boundary_reports_the_missing_layer(tiny, tiny_weights,
                                                                 tmp_path):
    path = write_caffemodel(tiny, tiny_weights, tmp_path / "t.caffemodel", extra_layers=False)
    data = path.read_bytes()
    cut = [f.key_start for f in FieldReader(memoryview(data))
           if f.number == 100 and b"\x0a\x02fc" in data[f.start:f.start + 4]][0]
    path.write_bytes(data[:cut])  # a clean cut just before the record of layer "fc"
    with pytest.raises(CaffeFormatError, match=r"layer 'fc' \(InnerProduct\) has no weights"):
        read_caffemodel(path, tiny)


def test_corrupt_file(tmp_path, rng):
    path = tmp_path / "noise.caffemodel"
    path.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CaffeFormatError, match=r"noise\.caffemodel"):
        read_caffemodel(path)


def test_a_prototxt_is_not_a_caffemodel():
    with pytest.raises(CaffeFormatError, match=r"deploy\.prototxt .*(corrupt|no layers)"):
        read_caffemodel(LENET / "deploy.prototxt")


def test_blob_shape_mismatch_names_layer_and_shapes(tiny, tiny_weights, tmp_path):
    wider = load_net(TINY.replace("num_output: 4", "num_output: 6"))
    path = write_caffemodel(tiny, tiny_weights, tmp_path / "t.caffemodel")
    with pytest.raises(CaffeFormatError,
                       match=r"layer 'conv1' weights: the net expects shape 6x3x3x3, the "
                             r"caffemodel has 4x3x3x3"):
        read_caffemodel(path, wider)


def test_legacy_blob_shape_mismatch_shows_the_legacy_shape(tiny, tiny_weights, tmp_path):
    other = load_net(TINY.replace("num_output: 5", "num_output: 7"))
    path = write_caffemodel(tiny, tiny_weights, tmp_path / "t.caffemodel", style="layers")
    with pytest.raises(CaffeFormatError,
                       match=r"layer 'fc' weights: the net expects shape 7x36, the caffemodel "
                             r"has 1x1x5x36"):
        read_caffemodel(path, other)


def test_blob_count_mismatch(tiny, tiny_weights, tmp_path):
    weights = dict(tiny_weights, fc=tiny_weights["fc"][:1])
    path = write_caffemodel(tiny, weights, tmp_path / "t.caffemodel")
    with pytest.raises(CaffeFormatError,
                       match=r"layer 'fc' has 1 blob\(s\) in the caffemodel \(5x36\) but the "
                             r"net expects 2 \(5x36, 5\)"):
        read_caffemodel(path, tiny)


def test_value_count_disagreeing_with_the_shape(tmp_path):
    blob = Builder().message(7, Builder().packed_varints(1, [4, 3, 3, 3])).packed(
        5, np.zeros(107, np.float32))
    layer = Builder().string(1, "conv1").string(2, "Convolution").message(7, blob)
    path = tmp_path / "short.caffemodel"
    path.write_bytes(Builder().message(100, layer).to_bytes())
    with pytest.raises(CaffeFormatError, match=r"layer 'conv1' weights declares shape "
                                               r"4x3x3x3 \(108 values\) but holds 107"):
        read_caffemodel(path)
