use super::*;

/// Where llama.cpp puts each block and the output layer under `plan`.
fn placed(plan: &LayerPlan) -> Vec<Option<usize>> {
    let (ngl, split) = plan.llama_params();
    (0..=plan.blocks()).map(|il| llama_device_of(il, plan.blocks(), ngl, &split)).collect()
}

#[test]
fn weights_deal_every_block_in_proportion() {
    let plan = LayerPlan::by_weights(30, &[1.0, 1.0, 1.0]).unwrap();
    assert_eq!(plan.counts, vec![10, 10, 10]);
    assert_eq!(plan.ranges(), vec![0..10, 10..20, 20..30]);
    let plan = LayerPlan::by_weights(30, &[1.0, 2.0, 2.0]).unwrap();
    assert_eq!(plan.counts, vec![6, 12, 12]);
    // 80 blocks by free memory 16, 24 and 40 GiB: 16, 24, 40.
    let plan = LayerPlan::by_weights(80, &[16e9, 24e9, 40e9]).unwrap();
    assert_eq!(plan.counts, vec![16, 24, 40]);
    // Remainders go to the largest fractions; the total is always every block.
    let plan = LayerPlan::by_weights(31, &[1.0, 1.0, 1.0]).unwrap();
    assert_eq!(plan.blocks(), 31);
    assert_eq!(plan.counts, vec![11, 10, 10]);
}

#[test]
fn a_head_may_hold_nothing_but_every_member_holds_a_block() {
    let plan = LayerPlan::by_weights(30, &[0.0, 1.0, 1.0]).unwrap();
    assert_eq!(plan.counts, vec![0, 15, 15]);
    // A member with a sliver of the weight still gets one block.
    let plan = LayerPlan::by_weights(10, &[100.0, 0.01, 100.0]).unwrap();
    assert_eq!(plan.counts.iter().sum::<u32>(), 10);
    assert!(plan.counts[1] >= 1, "{plan:?}");
    assert_eq!(LayerPlan::by_weights(30, &[1.0]), Err(PlanError::NoMembers));
    assert!(matches!(LayerPlan::by_weights(30, &[1.0, 0.0]), Err(PlanError::BadWeights(_))));
    assert!(matches!(LayerPlan::by_weights(30, &[f64::NAN, 1.0]), Err(PlanError::BadWeights(_))));
    assert!(matches!(LayerPlan::by_weights(30, &[-1.0, 1.0]), Err(PlanError::BadWeights(_))));
    assert_eq!(LayerPlan::by_weights(1, &[1.0, 1.0, 1.0]), Err(PlanError::TooFewLayers { blocks: 1, members: 2 }));
}

#[test]
fn llama_cpp_places_the_blocks_exactly_as_planned() {
    for (blocks, weights) in [
        (30u32, vec![1.0, 1.0, 1.0]),
        (30, vec![0.0, 1.0]),
        (30, vec![5.0, 1.0, 3.0, 1.0]),
        (80, vec![16.0, 24.0, 40.0]),
        (7, vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
        (126, vec![3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
    ] {
        let plan = LayerPlan::by_weights(blocks, &weights).unwrap();
        let where_ = placed(&plan);
        let mut want: Vec<Option<usize>> = Vec::new();
        for (stage, &n) in plan.counts.iter().enumerate() {
            want.extend(std::iter::repeat_n(stage.checked_sub(1), n as usize));
        }
        // The output layer goes with the last member.
        want.push(Some(plan.counts.len() - 2));
        assert_eq!(where_, want, "blocks {blocks}, weights {weights:?}, plan {plan:?}");
    }
}

#[test]
fn a_members_blocks_are_dealt_over_its_devices_and_land_there() {
    let plan = LayerPlan { counts: vec![6, 8, 16] };
    // Member 0 has one device; member 1 two GPUs with 24 and 8 GB free: 12 and 4 blocks.
    let per_device = plan.over_devices(&[vec![], vec![24e9, 8e9]]);
    assert_eq!(per_device.counts, vec![6, 8, 12, 4]);
    // Devices without a weight get nothing; ties go to the earlier device; unusable weights
    // count as equal.
    let plan = LayerPlan { counts: vec![2, 3, 1] };
    assert_eq!(plan.over_devices(&[vec![1.0, 0.0, 1.0], vec![5.0, 5.0]]).counts, vec![2, 2, 0, 1, 1, 0]);
    assert_eq!(plan.over_devices(&[vec![f64::NAN, 1.0], vec![0.0, 0.0]]).counts, vec![2, 2, 1, 1, 0]);
    assert_eq!(plan.over_devices(&[]), plan, "no devices named: one each");
    // llama.cpp places every block on the device the plan gives it, zero-block devices skipped.
    for per_device in [
        LayerPlan { counts: vec![6, 8, 12, 4] },
        LayerPlan { counts: vec![2, 2, 0, 1, 1, 0] },
        LayerPlan { counts: vec![0, 0, 40, 0, 40] },
    ] {
        let mut want: Vec<Option<usize>> = Vec::new();
        for (stage, &n) in per_device.counts.iter().enumerate() {
            want.extend(std::iter::repeat_n(stage.checked_sub(1), n as usize));
        }
        want.push(Some(per_device.counts.len() - 2));
        assert_eq!(placed(&per_device), want, "{per_device:?}");
    }
}
