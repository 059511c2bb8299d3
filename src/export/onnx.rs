//! The test-time network as an ONNX graph, translated op by op from the eval schedule that
//! `sliceout eval` runs, so the two cannot describe different networks.
//!
//! The graph takes `image`, float32 `(batch, C, 32, 32)` NCHW with values in 0..1 (pixel / 255;
//! 28x28 images zero-padded by 2 on every side, as sliceout reads them), subtracts the
//! training set's per-channel mean and divides by its std (`Sub`, `Div`), then runs `Conv`,
//! `BatchNormalization` (running statistics, epsilon 1e-5) + `Relu`, `Add`,
//! `GlobalAveragePool` + `Flatten` and `Gemm`, and returns `logits` `(batch, classes)`. The
//! batch dimension is named, so any batch size runs. Opset 17, IR version 8.
//!
//! A schedule names buffers and lets ops write into them (`accumulate` adds to what is there);
//! ONNX names each value once. The translation keeps, per buffer, the name of the value it
//! holds now, and turns an accumulating write into an `Add` of the old and the new value.

use super::proto::{
    tensor_shape_proto::{dimension, Dimension},
    type_proto, AttributeProto, AttributeType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, FLOAT,
};
use crate::io::checkpoint::Checkpoint;
use crate::ir::BufId;
use crate::model::wrn::{self, IMAGE};
use crate::ops::batchnorm::BN_EPS;
use crate::ops::Op;
use crate::schedule::{Lowering, Mode, Options, Schedule};
use std::collections::{BTreeMap, HashSet};

/// The ONNX operator set the graph is written for.
pub const OPSET: i64 = 17;
/// The ONNX IR version that goes with opset 17.
pub const IR_VERSION: i64 = 8;
/// The graph's input: raw images in 0..1.
pub const INPUT: &str = "image";
/// The graph's output.
pub const OUTPUT: &str = "logits";

/// The name of the dynamic batch dimension.
const BATCH: &str = "batch";

/// The model file for `ck`'s network, with `metadata` as the model's metadata properties.
/// `ck` must hold every tensor of its configuration's network (the caller checked).
pub fn model(ck: &Checkpoint, metadata: &BTreeMap<String, String>) -> Result<ModelProto, String> {
    let s = wrn::build(&ck.config, 1, Mode::Eval, Options::default(), Lowering::default());
    let mut g = Graph::default();
    for t in s.tensors.iter().filter(|t| t.role != crate::ir::Role::Momentum) {
        let src = ck.tensor(&t.name).ok_or_else(|| format!("has no tensor {}", t.name))?;
        g.initializer(&t.name, &t.shape, &src.data)?;
    }
    let channels = ck.config.in_channels;
    if ck.norm_mean.len() != channels || ck.norm_std.len() != channels {
        return Err(format!("normalisation constants for {} channels, the model has {channels}", ck.norm_mean.len()));
    }
    g.initializer("image.mean", &[1, channels, 1, 1], &ck.norm_mean)?;
    g.initializer("image.std", &[1, channels, 1, 1], &ck.norm_std)?;
    let centred = g.node("Sub", vec![INPUT.into(), "image.mean".into()], "image.centred", vec![])?;
    let normalised = g.node("Div", vec![centred, "image.std".into()], "image.normalised", vec![])?;
    let mut values: Vec<Option<String>> = vec![None; s.buffers.len()];
    values[s.input] = Some(normalised);
    translate(&s, &mut g, &mut values)?;
    if values[s.logits].as_deref() != Some(OUTPUT) {
        return Err("the network's last op does not produce the logits".into());
    }
    let classes = ck.config.classes;
    let graph = GraphProto {
        node: g.nodes,
        name: Some(format!("{} keep {}", ck.config.name(), ck.config.keep)),
        initializer: g.initializers,
        doc_string: Some(
            "image: float32 (batch, C, 32, 32) NCHW, pixel / 255 in 0..1; logits: (batch, classes)".into(),
        ),
        input: vec![value_info(INPUT, &[None, Some(channels), Some(IMAGE), Some(IMAGE)])],
        output: vec![value_info(OUTPUT, &[None, Some(classes)])],
    };
    Ok(ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET) }],
        producer_name: Some("sliceout".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(format!("{} trained by sliceout, test-time network", ck.config.name())),
        graph: Some(graph),
        metadata_props: metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto { key: Some(k.clone()), value: Some(v.clone()) })
            .collect(),
    })
}

/// Appends the nodes of every op of the eval schedule `s`; `values` holds, per buffer, the name
/// of the value in it.
fn translate(s: &Schedule, g: &mut Graph, values: &mut [Option<String>]) -> Result<(), String> {
    let tensor = |id: usize| s.tensors[id].name.clone();
    for step in &s.steps {
        let layer = &step.layer;
        match &step.op {
            Op::Conv(c) => {
                let sh = c.shape;
                if c.out_sel.width(&s.slices) != sh.cout || c.in_sel.width(&s.slices) != sh.cin {
                    return Err(format!("{layer} is sliced; the test-time network uses every channel"));
                }
                let (k, stride, pad) = (sh.k as i64, sh.stride as i64, sh.pad as i64);
                let attrs =
                    vec![ints("kernel_shape", &[k, k]), ints("strides", &[stride, stride]), ints("pads", &[pad; 4])];
                let y = g.node(
                    "Conv",
                    vec![read(values, c.inp, layer)?, tensor(c.weight)],
                    &format!("{layer}.conv"),
                    attrs,
                )?;
                store(g, values, c.out, y, c.accumulate, layer)?;
            }
            Op::BnReluEval(b) => {
                let inputs = vec![
                    read(values, b.inp, layer)?,
                    tensor(b.bn.gamma),
                    tensor(b.bn.beta),
                    tensor(b.bn.mean),
                    tensor(b.bn.var),
                ];
                let eps = AttributeProto {
                    name: Some("epsilon".into()),
                    r#type: Some(AttributeType::Float as i32),
                    f: Some(BN_EPS),
                    ..Default::default()
                };
                let normed = g.node("BatchNormalization", inputs, &format!("{layer}.bn"), vec![eps])?;
                let y = g.node("Relu", vec![normed], &format!("{layer}.relu"), vec![])?;
                store(g, values, b.out, y, false, layer)?;
            }
            Op::Add(a) => {
                let y = read(values, a.inp, layer)?;
                store(g, values, a.out, y, true, layer)?;
            }
            Op::Pool(p) => {
                let pooled =
                    g.node("GlobalAveragePool", vec![read(values, p.inp, layer)?], &format!("{layer}.gap"), vec![])?;
                let y = g.node("Flatten", vec![pooled], &format!("{layer}.flat"), vec![int("axis", 1)])?;
                store(g, values, p.out, y, false, layer)?;
            }
            Op::Linear(l) => {
                let name = if l.out == s.logits { OUTPUT.to_string() } else { format!("{layer}.gemm") };
                let inputs = vec![read(values, l.inp, layer)?, tensor(l.weight), tensor(l.bias)];
                let y = g.node("Gemm", inputs, &name, vec![int("transB", 1)])?;
                store(g, values, l.out, y, false, layer)?;
            }
            // The loss needs labels; the exported network ends at the logits.
            Op::CrossEntropy(_) => {}
            other => return Err(format!("{layer}: {} is not an op of the test-time network", other.kind())),
        }
    }
    Ok(())
}

/// The value buffer `b` holds, or an error naming the layer that reads it too early.
fn read(values: &[Option<String>], b: BufId, layer: &str) -> Result<String, String> {
    values[b].clone().ok_or_else(|| format!("{layer} reads a buffer no earlier op wrote"))
}

/// Makes buffer `b` hold `y`, or (accumulating) the sum of what it holds and `y`.
fn store(
    g: &mut Graph,
    values: &mut [Option<String>],
    b: BufId,
    y: String,
    accumulate: bool,
    layer: &str,
) -> Result<(), String> {
    let y =
        if accumulate { g.node("Add", vec![read(values, b, layer)?, y], &format!("{layer}.sum"), vec![])? } else { y };
    values[b] = Some(y);
    Ok(())
}

/// Nodes and initializers, with every value name used once.
#[derive(Default)]
struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    names: HashSet<String>,
}

impl Graph {
    fn claim(&mut self, name: &str) -> Result<(), String> {
        if !self.names.insert(name.to_string()) {
            return Err(format!("the value name {name} would be defined twice"));
        }
        Ok(())
    }

    /// A node named after its only output `output`; returns that output's name.
    fn node(
        &mut self,
        op: &str,
        input: Vec<String>,
        output: &str,
        attribute: Vec<AttributeProto>,
    ) -> Result<String, String> {
        self.claim(output)?;
        self.nodes.push(NodeProto {
            input,
            output: vec![output.to_string()],
            name: Some(output.to_string()),
            op_type: Some(op.to_string()),
            attribute,
        });
        Ok(output.to_string())
    }

    /// A float32 constant.
    fn initializer(&mut self, name: &str, shape: &[usize], data: &[f32]) -> Result<(), String> {
        if shape.iter().product::<usize>() != data.len() {
            return Err(format!(
                "tensor {name} holds {} values, its shape {shape:?} needs {}",
                data.len(),
                shape.iter().product::<usize>()
            ));
        }
        self.claim(name)?;
        self.initializers.push(TensorProto {
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: Some(FLOAT),
            name: Some(name.to_string()),
            raw_data: Some(data.iter().flat_map(|x| x.to_le_bytes()).collect()),
        });
        Ok(())
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// A float32 graph input or output; `None` dimensions are the dynamic batch.
fn value_info(name: &str, dims: &[Option<usize>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(n) => dimension::Value::DimValue(*n as i64),
                None => dimension::Value::DimParam(BATCH.into()),
            }),
        })
        .collect();
    let tensor = type_proto::Tensor { elem_type: Some(FLOAT), shape: Some(TensorShapeProto { dim }) };
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto { value: Some(type_proto::Value::TensorType(tensor)) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::proto::ModelProto;
    use crate::io::checkpoint::looks_like_onnx;
    use prost::Message;

    /// ONNX files open with `ir_version` then another field, in our order or PyTorch's
    /// (`producer_name` next); checkpoints, safetensors files and text do not.
    #[test]
    fn onnx_is_told_from_the_other_files() {
        let ours = ModelProto {
            ir_version: Some(IR_VERSION),
            opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET) }],
            producer_name: Some("sliceout".into()),
            ..ModelProto::default()
        };
        let theirs = ModelProto { ir_version: Some(7), producer_name: Some("pytorch".into()), ..ModelProto::default() };
        for m in [ours, theirs] {
            assert!(looks_like_onnx(&m.encode_to_vec()), "{m:?}");
        }
        let safetensors = [&16u64.to_le_bytes()[..], b"{\"__metadata__\":{}}"].concat();
        let mut header_like = safetensors.clone();
        header_like[..3].copy_from_slice(&[0x08, 0x08, 0x42]);
        for other in [
            &crate::io::checkpoint::MAGIC[..],
            &safetensors,
            &header_like,
            b"\x08",
            b"\x08\x08",
            b"\x08\x00\x12",
            b"hello",
        ] {
            assert!(!looks_like_onnx(other), "{other:?}");
        }
    }
}
