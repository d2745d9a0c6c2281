"""The order in which reports list methods: baselines (probe, full fine-tuning, long-tail losses and samplers,
parameter-efficient tuning, decoupled classifiers, CLIP), then LPT and its ablation, then LPT++ and its ablations,
then the comparators named beside LPT++ (CPE, LMPT, PEMT) and theirs. Light, so
`bench report` lists rows in this order without importing torch; `register_method` refuses a method of this
package missing here, so every one has its place. Plugin methods (entry points) need no place: they come last."""

METHOD_ORDER = (
    "linear_probe", "finetune", "la", "bs", "vpt_shallow", "vpt_deep", "adaptformer", "bitfit", "lift", "crt", "lws",
    "zeroshot_clip", "clip_probe", "lpt", "lpt_ce", "lptpp", "lptpp_visual", "lptpp_vl", "lptpp_no_adapter",
    "lptpp_no_group_prompts", "lptpp_mean",
    "cpe", "cpe_1head", "cpe_no_cbn", "cpe_frozen",
    "lmpt", "lmpt_no_csel", "lmpt_generic_ctx", "lmpt_softmax", "lmpt_template",
    "pemt", "pemt_no_aux", "pemt_uniform_gate", "pemt_no_prompt_attn", "pemt_no_target_adapter", "pemt_adapter_only",
)
