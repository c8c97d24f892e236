"""What recipes share: the pieces a stage (tunelab.stages.<name>) builds its training from.

A layer between the recipes (stages/) and the engine: every module here may be imported by any stage,
by eval and infer (heads: a trained scorer loads without importing a recipe), and never imports a stage.

- setup: set up the run folder, model and method before training; save the result after it
- common: per-token log-probs, masked reductions, KL estimators, registry lookup
- tokens: prompt/answer tokenization with the shared truncation rule
- lm_loss: the next-token loss on target tokens (SFT, continued pretraining, rejection sampling)
- pairs: chosen/rejected pair samples and their collator (preference, reward)
- classes: classifier samples, scorers and predictions (classify, pseudo-labelling)
- heads: the score head (ScoreModel) of classify/reward/ppo runs and its loader
- reference: a frozen copy of the policy for KL terms and reference log-probs
- rewards: reward functions for sampled completions (grpo, selftrain)
- rollout: prompt batches and sampling completions from the policy (grpo, ppo, selftrain)
"""
