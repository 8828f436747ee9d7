"""Tiny ONNX models with the signatures of the real dataset-preparation models, for tests and benches.

- `write_tiny_wd14(folder, size)`: WD14 tagger layout (`model.onnx` + `selected_tags.csv` with the
  real columns). The network is identity-like: output k is input element k (NHWC order) / 255,
  so each "tag probability" reveals one input value and tests can check the preprocessing
  against their own reference.
- `write_tiny_u2net(path, size)`: u2net's signature (`[1, 3, S, S]` in, seven `[1, 1, S, S]` out);
  every output is the channel mean of the input, so the mask follows the picture's brightness.

Built with the `onnx` package's helper API (a dev dependency).
"""

from __future__ import annotations

import csv
from pathlib import Path

CHARACTER_ROWS = 4  # the first tags after the ratings are characters, as in the real CSVs


def wd14_tag_names(size: int) -> list[tuple[str, int]]:
    """(name, category) per output: 4 ratings, then characters, then general tags."""
    n = size * size * 3
    rows: list[tuple[str, int]] = []
    for k in range(n):
        y, x, c = k // (size * 3), (k // 3) % size, k % 3
        if k < 4:
            rows.append((("general", "sensitive", "questionable", "explicit")[k], 9))
        elif k < 4 + CHARACTER_ROWS:
            rows.append((f"character_{k}_(series)", 4))
        else:
            rows.append((f"px_{y}_{x}_{'bgr'[c]}", 0))
    return rows


def write_tiny_wd14(folder: str | Path, size: int = 4, *, input_shape: list | None = None,
                    with_csv: bool = True) -> Path:
    import onnx
    from onnx import TensorProto, helper

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = size * size * 3
    shape = input_shape or ["batch", size, size, 3]
    inp = helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, shape)
    out = helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, ["batch", n])
    nodes = [
        helper.make_node("Constant", [], ["flat_shape"],
                         value=helper.make_tensor("flat_shape_v", TensorProto.INT64, [2], [-1, n])),
        helper.make_node("Reshape", ["input_1:0", "flat_shape"], ["flat"]),
        helper.make_node("Constant", [], ["scale"], value=helper.make_tensor("scale_v", TensorProto.FLOAT, [], [1 / 255])),
        helper.make_node("Mul", ["flat", "scale"], ["predictions_sigmoid"]),
    ]
    graph = helper.make_graph(nodes, "tiny_wd14", [inp], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    if with_csv:
        with open(folder / "selected_tags.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["tag_id", "name", "category", "count"])
            for k, (name, cat) in enumerate(wd14_tag_names(size)):
                w.writerow([100000 + k, name, cat, 1000 - k])
    return folder


def write_tiny_u2net(path: str | Path, size: int = 32) -> Path:
    import onnx
    from onnx import TensorProto, helper

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, size, size])
    names = [f"d{i}" for i in range(1, 8)]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, size, size]) for n in names]
    nodes = [helper.make_node("ReduceMean", ["input.1"], ["mean"], axes=[1], keepdims=1)]
    nodes += [helper.make_node("Identity", ["mean"], [n]) for n in names]
    graph = helper.make_graph(nodes, "tiny_u2net", [inp], outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_bench_wd14(folder: str | Path, size: int = 448, n_tags: int = 9083, seed: int = 0) -> Path:
    """A WD14-signature model with the real input size and tag count (wd-v1-4: 448 px, 9083 tags)
    but almost no compute (mean colour -> one linear layer -> sigmoid): a bench of it measures
    what lorastudio adds around onnxruntime, not the network."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # Inputs are 0..255: small weights keep the colour from swamping the bias.
    weight = (rng.standard_normal((3, n_tags)) / 2000.0).astype(np.float32)
    # About 30 tags above 0.35 per picture, as the real models give on typical art.
    bias = (rng.standard_normal(n_tags) * 2.0 - 6.0).astype(np.float32)
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", size, size, 3])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", n_tags])
    nodes = [helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["mean", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["output"])]
    graph = helper.make_graph(nodes, "bench_wd14", [inp], [out],
                              initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    with open(folder / "selected_tags.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["tag_id", "name", "category", "count"])
        for k in range(n_tags):
            cat = 9 if k < 4 else 4 if k < 4 + 2000 else 0
            w.writerow([k, f"tag_{k}_(x)" if k % 7 == 0 else f"tag_{k}", cat, n_tags - k])
    return folder
