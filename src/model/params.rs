//! The network's persistent tensors without its schedule: what reading, checking and writing a
//! model file needs (names, shapes, roles, the persistent region's layout), listed straight
//! from the configuration instead of by compiling a step, which sizes every buffer and asks
//! each convolution for its workspaces.
//!
//! The list is the one `wrn::build` makes, in its order and at its offsets: the tests below
//! hold the two together.

use crate::ir::{Init, ModelConfig, Role, TensorSpec};

/// Every persistent tensor of `config`'s network, as `wrn::build(config, ..).tensors` lists
/// them: per layer in the network's order, parameters and BN statistics, then one momentum per
/// parameter; laid out as parameters, momentum, running means, running variances, each on a
/// 16-byte boundary.
pub fn tensors(config: &ModelConfig) -> Vec<TensorSpec> {
    let mut list = vec![];
    let k = config.widen;
    add(&mut list, "conv0.weight".into(), &[16, config.in_channels, 3, 3], Role::Param, Init::KaimingFanOut);
    let (mut cin, mut block) = (16, 0);
    for (g, c) in [16 * k, 32 * k, 64 * k].into_iter().enumerate() {
        for j in 0..config.blocks_per_group() {
            let stride = if j == 0 && g > 0 { 2 } else { 1 };
            let name = format!("block{block}");
            bn(&mut list, &format!("{name}.bn1"), cin);
            add(&mut list, format!("{name}.conv1.weight"), &[c, cin, 3, 3], Role::Param, Init::KaimingFanOut);
            bn(&mut list, &format!("{name}.bn2"), c);
            add(&mut list, format!("{name}.conv2.weight"), &[c, c, 3, 3], Role::Param, Init::KaimingFanOut);
            if cin != c || stride != 1 {
                let shape = [c, cin, 1, 1];
                add(&mut list, format!("{name}.shortcut.weight"), &shape, Role::Param, Init::KaimingFanOut);
            }
            (cin, block) = (c, block + 1);
        }
    }
    bn(&mut list, "bn", cin);
    add(&mut list, "fc.weight".into(), &[config.classes, cin], Role::Param, Init::UniformFanIn);
    add(&mut list, "fc.bias".into(), &[config.classes], Role::Param, Init::Zeros);
    let momentum: Vec<TensorSpec> = list
        .iter()
        .filter(|t| t.role == Role::Param)
        .map(|t| TensorSpec {
            name: format!("{}.momentum", t.name),
            role: Role::Momentum,
            init: Init::Zeros,
            ..t.clone()
        })
        .collect();
    list.extend(momentum);
    lay_out(&mut list);
    list
}

/// Places `tensors` in the persistent region: parameters, then momentum, then running means,
/// then running variances, each tensor on a 16-byte boundary so that the GPU's SGD can move
/// four floats at a time (the gaps, at most three floats each, stay zero).
pub fn lay_out(tensors: &mut [TensorSpec]) {
    let mut offset = 0;
    for role in [Role::Param, Role::Momentum, Role::RunningMean, Role::RunningVar] {
        for t in tensors.iter_mut().filter(|t| t.role == role) {
            t.offset = offset;
            offset = (offset + t.len()).next_multiple_of(4);
        }
    }
}

/// One tensor, placed by [`tensors`] once the list is complete.
fn add(list: &mut Vec<TensorSpec>, name: String, shape: &[usize], role: Role, init: Init) {
    list.push(TensorSpec { name, shape: shape.to_vec(), role, init, offset: 0 });
}

/// A BN layer of `c` channels: its weight and bias, then its running statistics.
fn bn(list: &mut Vec<TensorSpec>, name: &str, c: usize) {
    add(list, format!("{name}.weight"), &[c], Role::Param, Init::Ones);
    add(list, format!("{name}.bias"), &[c], Role::Param, Init::Zeros);
    add(list, format!("{name}.running_mean"), &[c], Role::RunningMean, Init::Zeros);
    add(list, format!("{name}.running_var"), &[c], Role::RunningVar, Init::Ones);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::wrn;
    use crate::schedule::{Lowering, Mode, Options};

    /// The listing is the schedule's, tensor for tensor, in train and eval alike.
    #[test]
    fn the_listing_is_the_schedules() {
        for (depth, widen, classes, in_channels) in [(10, 1, 10, 3), (16, 2, 100, 1), (22, 3, 7, 5), (28, 10, 10, 3)] {
            let config = ModelConfig { depth, widen, classes, in_channels, keep: 0.5 };
            let listed: Vec<String> = tensors(&config).iter().map(|t| format!("{t:?}")).collect();
            for mode in [Mode::Train, Mode::Eval] {
                let built = wrn::build(&config, 2, mode, Options::default(), Lowering::default());
                let built: Vec<String> = built.tensors.iter().map(|t| format!("{t:?}")).collect();
                assert_eq!(listed, built, "{} {mode:?}", config.name());
            }
        }
    }
}
