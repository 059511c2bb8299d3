use super::svg::KINDS;
use super::text::chart_chars;
use super::*;
use crate::ir::mib;
use crate::plan::{check, naive_bytes, plan_greedy, Lifetime, ALIGN};

const MB: usize = 1 << 20;

/// A small training-like bf16 plan (f32 weight gradient), planned for real, with its fp32
/// totals beside it.
fn sample() -> PlanReport {
    let steps: Vec<String> = [
        "f0 stem.conv",
        "f1 g0.b0.conv1 with a very long operator name",
        "f2 g0.b0.conv2",
        "b3 g0.b0.conv2",
        "b4 g0.b0.conv1",
        "u5 sgd",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mk = |name: &str, kind, bytes, first, last, sliced| BufferInfo {
        name: name.to_string(),
        kind,
        dtype: if kind == BufKind::WeightGradient { Dtype::F32 } else { Dtype::Bf16 },
        bytes,
        first,
        last,
        sliced,
    };
    let buffers = vec![
        mk("x0", BufKind::Activation, 4 * MB, 0, 4, false),
        mk("h1 <sliced> & co", BufKind::Activation, 2 * MB, 1, 3, true),
        mk("col", BufKind::Workspace, 3 * MB, 1, 1, false),
        mk("dh1", BufKind::Gradient, 2 * MB + 1000, 3, 4, true),
        mk("dw conv1", BufKind::WeightGradient, MB / 2, 4, 5, false),
        mk("empty", BufKind::Workspace, 0, 2, 2, false),
    ];
    let lts: Vec<Lifetime> =
        buffers.iter().map(|b| Lifetime { bytes: b.bytes, first: b.first, last: b.last }).collect();
    let p = plan_greedy(&lts, ALIGN);
    check(&lts, &p, ALIGN).unwrap();
    PlanReport {
        model: "WRN-10-2".into(),
        batch: 4,
        keep: 0.5,
        mode: "train".into(),
        precision: Precision::Bf16,
        alignment: ALIGN,
        steps,
        buffers,
        offsets: p.offsets,
        arena_bytes: p.arena_bytes,
        naive_bytes: naive_bytes(&lts),
        persistent_bytes: 3 * MB,
        persistent_parts: vec![
            ("params".into(), MB + MB / 2),
            ("momentum".into(), MB + MB / 2 - 4096),
            ("bn stats".into(), 4096),
        ],
        options: vec![("recompute".into(), "bn-relu".into())],
        baseline: Some(Baseline { keep: 1.0, arena_bytes: 16 * MB, naive_bytes: 20 * MB, persistent_bytes: 3 * MB }),
        precisions: vec![
            PrecisionTotals {
                precision: Precision::Bf16,
                arena_bytes: p.arena_bytes,
                total_bytes: p.arena_bytes + 3 * MB,
            },
            PrecisionTotals { precision: Precision::Fp32, arena_bytes: 17 * MB, total_bytes: 20 * MB },
        ],
        gpu_calls: None,
    }
}

#[test]
fn json_round_trips() {
    let r = sample();
    let v: serde_json::Value = serde_json::from_str(&json(&r)).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    for k in [
        "model",
        "batch",
        "keep",
        "mode",
        "precision",
        "alignment",
        "arena_bytes",
        "naive_bytes",
        "persistent_bytes",
        "steps",
        "buffers",
        "options",
        "baseline",
        "precisions",
    ] {
        assert!(keys.contains(&k), "missing {k}");
    }
    assert_eq!(keys.len(), 14);
    assert_eq!(v["precision"], "bf16");
    assert_eq!(v["precisions"][0]["precision"], "bf16");
    assert_eq!(v["precisions"][0]["arena_bytes"], r.arena_bytes as u64);
    assert_eq!(v["precisions"][0]["total_bytes"], (r.arena_bytes + 3 * MB) as u64);
    assert_eq!(v["precisions"][1]["precision"], "fp32");
    assert_eq!(v["precisions"][1]["total_bytes"], 20 * MB as u64);
    assert_eq!(v["model"], "WRN-10-2");
    assert_eq!(v["batch"], 4);
    assert_eq!(v["keep"], 0.5);
    assert_eq!(v["mode"], "train");
    assert_eq!(v["alignment"], 256);
    assert_eq!(v["arena_bytes"], r.arena_bytes as u64);
    assert_eq!(v["naive_bytes"], r.naive_bytes as u64);
    assert_eq!(v["persistent_bytes"], 3 * MB as u64);
    assert_eq!(v["steps"].as_array().unwrap().len(), 6);
    assert_eq!(v["steps"][2], "f2 g0.b0.conv2");
    let bufs = v["buffers"].as_array().unwrap();
    assert_eq!(bufs.len(), r.buffers.len());
    for (i, b) in bufs.iter().enumerate() {
        assert_eq!(b.as_object().unwrap().len(), 8);
        assert_eq!(b["name"], r.buffers[i].name.as_str());
        assert_eq!(b["kind"], r.buffers[i].kind.as_str());
        assert_eq!(b["dtype"], r.buffers[i].dtype.as_str());
        assert_eq!(b["bytes"], r.buffers[i].bytes as u64);
        assert_eq!(b["offset"], r.offsets[i] as u64);
        assert_eq!(b["first"], r.buffers[i].first as u64);
        assert_eq!(b["last"], r.buffers[i].last as u64);
        assert_eq!(b["sliced"], r.buffers[i].sliced);
    }
    assert_eq!(bufs[3]["kind"], "gradient");
    assert_eq!(
        (&bufs[3]["dtype"], &bufs[4]["kind"], &bufs[4]["dtype"]),
        (&"bf16".into(), &"weight_gradient".into(), &"f32".into())
    );
    assert_eq!(v["options"]["recompute"], "bn-relu");
    assert_eq!(v["baseline"]["keep"], 1.0);
    assert_eq!(v["baseline"]["arena_bytes"], 16 * MB as u64);
    let mut r2 = r.clone();
    r2.baseline = None;
    let v2: serde_json::Value = serde_json::from_str(&json(&r2)).unwrap();
    assert!(v2["baseline"].is_null());
}

#[test]
fn text_has_summary_table_and_chart() {
    let r = sample();
    let t = text(&r, 40);
    let total = mib(r.persistent_bytes + r.arena_bytes);
    assert!(t.contains("WRN-10-2") && t.contains("batch 4") && t.contains("keep 0.50"));
    assert!(t.contains("mode train"));
    assert!(t.contains(&format!("{:.2} MiB", mib(r.arena_bytes))), "{t}");
    assert!(t.contains(&format!("{:.2} MiB", mib(r.naive_bytes))));
    assert!(t.contains(&format!("{total:.2} MiB")));
    assert!(t.contains("params 1.50 MiB") && t.contains("bn stats 0.00 MiB"));
    assert!(t.contains("recompute=bn-relu"));
    // Baseline total 19 MiB against ours.
    let save = 19.0 - total;
    assert!(t.contains("total 19.00 MiB"), "{t}");
    assert!(t.contains(&format!("{save:.2} MiB")), "{t}");
    assert!(t.contains(&format!("{:.1}%", 100.0 * save / 19.0)));
    // Both precisions' totals on one line, this plan's first.
    let line = t.lines().find(|l| l.trim_start().starts_with("precision")).expect("a precision line");
    let want = format!(
        "bf16: arena {:.2} MiB, total {total:.2} MiB; fp32: arena 17.00 MiB, total 20.00 MiB",
        mib(r.arena_bytes)
    );
    assert!(line.ends_with(&want), "{line}");
    let mut one = r.clone();
    one.precisions.truncate(1);
    assert!(!text(&one, 40).contains("  precision "), "a lone precision is not repeated");
    // Table rows for buffers 3 and 4: kind, element type, steps, sliced.
    let row = |name: &str| t.lines().find(|l| l.split_whitespace().nth(1) == Some(name)).unwrap().to_string();
    let row3 = row("dh1");
    assert_eq!(row3.split_whitespace().take(4).collect::<Vec<_>>(), ["3", "dh1", "gradient", "bf16"]);
    assert_eq!(
        row("dw").split_whitespace().take(5).collect::<Vec<_>>(),
        ["4", "dw", "conv1", "weight_gradient", "f32"]
    );
    assert!(row3.contains("gradient") && row3.contains("3..4") && row3.contains("yes"));
    assert!(row3.contains(&format!("{:.2}", mib(2 * MB + 1000))));

    // Chart rows: one per step, framed by '|', 40 columns, live MiB at the end.
    let rows: Vec<&str> = t.lines().filter(|l| l.matches('|').count() == 2).collect();
    assert_eq!(rows.len(), r.steps.len());
    let chars = chart_chars(&r);
    for (step, row) in rows.iter().enumerate() {
        assert_eq!(row.split_whitespace().next().unwrap(), step.to_string());
        let bar = row.split('|').nth(1).unwrap();
        assert_eq!(bar.chars().count(), 40);
        let live: usize = r.buffers.iter().filter(|b| b.first <= step && step <= b.last).map(|b| b.bytes).sum();
        let shown: f64 = row.split_whitespace().last().unwrap().parse().unwrap();
        assert!((shown - mib(live)).abs() < 0.006, "step {step}: {row}");
        // Every live non-empty buffer's character appears on its rows, others do not
        // unless a live buffer shares it.
        for (i, b) in r.buffers.iter().enumerate() {
            let is_live = b.bytes > 0 && b.first <= step && step <= b.last;
            if is_live {
                assert!(bar.contains(chars[i]), "step {step} buffer {i}: {row}");
            }
        }
    }
    // Step 1: x0 (4 MiB) + h1 (2 MiB) + col (3 MiB) = 9 MiB.
    assert!(rows[1].trim_end().ends_with("9.00"), "{}", rows[1]);
    // Long op names are cut to 24 characters.
    assert!(rows[1].contains("f1 g0.b0.conv1 with a v~"));
    // Concurrently live buffers get distinct characters.
    assert_eq!(chars.len(), r.buffers.len());
    assert_ne!(chars[0], chars[1]);
    assert_ne!(chars[1], chars[2]);
    // Free space shows as '.': at step 5 only 0.5 MiB of the arena is live.
    assert!(rows[5].split('|').nth(1).unwrap().contains('.'));
}

#[test]
fn chart_characters_cycle_and_avoid_live_clashes() {
    let mut r = sample();
    // 200 buffers all live together, each in its own slice of the arena.
    r.buffers = (0..200)
        .map(|i| BufferInfo {
            name: format!("b{i}"),
            kind: BufKind::Activation,
            dtype: Dtype::F32,
            bytes: 1024,
            first: 0,
            last: 5,
            sliced: false,
        })
        .collect();
    r.offsets = (0..200).map(|i| i * 1024).collect();
    r.arena_bytes = 200 * 1024;
    let c = chart_chars(&r);
    assert_eq!(&c[..12], &['0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'a', 'b']);
    assert_eq!(c[36], 'A');
    assert!(c.iter().all(|&ch| ch != '.' && ch != '|' && ch != ' '));
    // Memory neighbours always differ, even once characters must repeat.
    for w in c.windows(2) {
        assert_ne!(w[0], w[1]);
    }
    // A big plan's text stays one row per step.
    let t = text(&r, 100);
    assert_eq!(t.lines().filter(|l| l.matches('|').count() == 2).count(), 6);
}

#[test]
fn svg_draws_every_buffer_and_escapes_names() {
    let r = sample();
    let g = svg(&r);
    assert!(g.starts_with("<svg"));
    assert!(g.trim_end().ends_with("</svg>"));
    let nonempty = r.buffers.iter().filter(|b| b.bytes > 0).count();
    assert_eq!(g.matches("<rect").count(), nonempty);
    assert_eq!(g.matches("<title>").count(), nonempty);
    assert!(g.contains("h1 &lt;sliced&gt; &amp; co"));
    assert!(!g.contains("<sliced>"));
    // Sliced buffers are hatched, and the legend says so.
    assert_eq!(g.matches("fill=\"url(#sliced-activation)\"").count(), 1);
    assert_eq!(g.matches("fill=\"url(#sliced-gradient)\"").count(), 1);
    assert!(g.contains("sliced, hatched (2)"));
    for k in ["activation", "gradient", "weight_gradient", "workspace"] {
        assert!(g.contains(&format!(">{k}: ")), "legend lacks {k}");
    }
    // A kind the plan lacks is left out of the legend; once present it is drawn in.
    assert!(!g.contains(">weight_copy: "));
    let mut with_copy = r.clone();
    with_copy.buffers[0].kind = BufKind::WeightCopy;
    let g3 = svg(&with_copy);
    assert!(g3.contains(">weight_copy: 1 buffers, 4.0 MiB") && g3.contains("fill=\"#b07aa1\""), "{g3}");
    assert!(g.contains("schedule step") && g.contains("arena offset (MiB)"));
    assert!(g.contains(&format!("arena {:.2} MiB", mib(r.arena_bytes))));
    // Rects stay inside the plot: the buffer at offset 0 reaches the bottom axis.
    let mut model = r.clone();
    model.model = "W<R>N & co".into();
    let g2 = svg(&model);
    assert!(g2.contains("W&lt;R&gt;N &amp; co") && !g2.contains("W<R>N"));
}

#[test]
fn large_report_is_quick() {
    let mut rng = crate::rng::Rng::new(3, 77);
    let steps = 2000;
    let lts: Vec<Lifetime> = (0..3000)
        .map(|_| {
            let first = rng.below(steps);
            let len = rng.below(40).min(steps - 1 - first);
            Lifetime { bytes: 256 * (1 + rng.below(8192)), first, last: first + len }
        })
        .collect();
    let p = plan_greedy(&lts, ALIGN);
    let mut r = sample();
    r.steps = (0..steps).map(|i| format!("op{i}")).collect();
    r.buffers = lts
        .iter()
        .enumerate()
        .map(|(i, l)| BufferInfo {
            name: format!("buf{i}"),
            kind: KINDS[i % KINDS.len()].0,
            dtype: if i % 2 == 0 { Dtype::F32 } else { Dtype::Bf16 },
            bytes: l.bytes,
            first: l.first,
            last: l.last,
            sliced: i % 3 == 0,
        })
        .collect();
    r.offsets = p.offsets;
    r.arena_bytes = p.arena_bytes;
    let t0 = std::time::Instant::now();
    let t = text(&r, 120);
    let g = svg(&r);
    let j = json(&r);
    assert!(t0.elapsed().as_secs_f64() < 10.0, "{:?}", t0.elapsed());
    assert_eq!(t.lines().filter(|l| l.matches('|').count() == 2).count(), steps);
    assert_eq!(g.matches("<rect").count(), 3000);
    assert!(serde_json::from_str::<serde_json::Value>(&j).is_ok());
}
