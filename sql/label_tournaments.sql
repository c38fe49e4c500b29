-- label_tournaments: a pairwise teacher's West-of-N draw per prompt, judged through knockout
-- tournaments (Pace et al. 2024): pair_draws rows, as sql/label_picks.sql writes for a pointwise
-- teacher, so sql/west_of_n_pairs.sql keeps the pairs and sql/selection_report_pairwise.sql
-- counts the outcomes, each from these rows.
--
-- Reads:
--   candidates        (wofn.schemas.CANDIDATES)
--                     prompt_id, candidate_idx, prompt, response, num_tokens,
--                     logprob_sum, logprob_mean, policy
--   tournament_pairs  (wofn.schemas.TOURNAMENT_PAIRS)
--                     prompt_id, chosen_idx, rejected_idx, logit, n_candidates, reward_model
--
-- Produces (wofn.schemas.PAIR_DRAWS, in this order; one row per prompt_id of candidates):
--   strategy, pair_seed, prompt_id, outcome, prompt, chosen, rejected, chosen_idx, rejected_idx,
--   chosen_reward, rejected_reward, margin, confidence,
--   chosen_logprob_sum, rejected_logprob_sum, chosen_logprob_mean, rejected_logprob_mean,
--   chosen_num_tokens, rejected_num_tokens, n_candidates, policy, reward_model, agreement
--
-- Parameters: none (a pairwise teacher supports only west_of_n: strategy = 'west_of_n',
-- pair_seed = NULL).
--
-- Per tournament row (the best bracket's champion = chosen, the worst bracket's last one =
-- rejected, logit = the teacher's symmetrized logit that chosen beats rejected, from their
-- direct comparison), the outcome, checked in this order (wofn.schemas.PAIRWISE_OUTCOMES):
--   no_tournament_pair        the teacher wrote no tournament row (fewer than 2 candidates, or the
--                             best and worst brackets ended on the same candidate)
--   teacher_prefers_rejected  logit is NULL, not finite, or <= 0 (a tie included): the direct
--                             comparison disagrees with the brackets
--   missing_candidate         chosen_idx = rejected_idx, or one of them has no candidate row
--   identical_texts           the two responses have the same text
--   pair                      a pair
-- A pairwise teacher gives no per-response rewards, so the logit is split in half:
--   chosen_reward = logit / 2, rejected_reward = -logit / 2 (not pointwise rewards!), so that
--   margin = chosen_reward - rejected_reward = logit (> 0 for pairs; any sign otherwise) and
--   confidence = sigmoid(margin) = 1 / (1 + exp(-logit)), in (0.5, 1] for pairs = the teacher's
--   own P(chosen > rejected), exactly as for the pointwise pairs.
-- logprob_* and num_tokens are the policy's (temperature 1, nats) for each response; prompt is
-- the prompt's text; n_candidates = the tournament's number of candidates (without a tournament
-- row: the prompt's distinct candidates); policy comes from the chosen candidate's row,
-- reward_model from the tournament row; agreement is NULL (one pairwise teacher).
-- Duplicate rows (the same (prompt_id, candidate_idx) in candidates, the same prompt_id in
-- tournament_pairs) count once, so a prompt never gets two draws: the first row is kept,
-- ordered by its columns.
-- Ordered by prompt_id.

with

candidate_rows as (

    select
        prompt_id,
        candidate_idx,
        prompt,
        response,
        num_tokens,
        logprob_sum,
        logprob_mean,
        policy,
        row_number() over (
            partition by prompt_id, candidate_idx
            order by response, num_tokens, logprob_sum, policy
        ) as copy_rank
    from candidates

),

source_candidates as (

    -- duplicate rows of a (prompt_id, candidate_idx) count once
    select * exclude (copy_rank) from candidate_rows where copy_rank = 1

),

prompts as (

    select prompt_id, min(prompt) as prompt, count(*) as n_candidates
    from source_candidates
    group by prompt_id

),

tournament_rows as (

    select
        prompt_id,
        chosen_idx,
        rejected_idx,
        logit,
        n_candidates,
        reward_model,
        row_number() over (
            partition by prompt_id
            order by chosen_idx, rejected_idx, logit, reward_model
        ) as copy_rank
    from tournament_pairs

),

source_tournaments as (

    -- duplicate rows of a prompt_id count once
    select * exclude (copy_rank) from tournament_rows where copy_rank = 1

),

labelled as (

    select
        prompts.prompt_id,
        case
            when source_tournaments.prompt_id is null then 'no_tournament_pair'
            when source_tournaments.logit is null
                or not isfinite(source_tournaments.logit)
                or source_tournaments.logit <= 0 then 'teacher_prefers_rejected'
            when source_tournaments.chosen_idx = source_tournaments.rejected_idx
                or chosen_candidate.prompt_id is null
                or rejected_candidate.prompt_id is null then 'missing_candidate'
            when chosen_candidate.response = rejected_candidate.response then 'identical_texts'
            else 'pair'
        end as outcome,
        prompts.prompt,
        chosen_candidate.response as chosen,
        rejected_candidate.response as rejected,
        source_tournaments.chosen_idx,
        source_tournaments.rejected_idx,
        source_tournaments.logit / 2 as chosen_reward,
        -source_tournaments.logit / 2 as rejected_reward,
        source_tournaments.logit as margin,
        chosen_candidate.logprob_sum as chosen_logprob_sum,
        rejected_candidate.logprob_sum as rejected_logprob_sum,
        chosen_candidate.logprob_mean as chosen_logprob_mean,
        rejected_candidate.logprob_mean as rejected_logprob_mean,
        chosen_candidate.num_tokens as chosen_num_tokens,
        rejected_candidate.num_tokens as rejected_num_tokens,
        coalesce(source_tournaments.n_candidates, prompts.n_candidates) as n_candidates,
        chosen_candidate.policy,
        source_tournaments.reward_model
    from prompts
    left join source_tournaments
        on prompts.prompt_id = source_tournaments.prompt_id
    left join source_candidates as chosen_candidate
        on source_tournaments.prompt_id = chosen_candidate.prompt_id
        and source_tournaments.chosen_idx = chosen_candidate.candidate_idx
    left join source_candidates as rejected_candidate
        on source_tournaments.prompt_id = rejected_candidate.prompt_id
        and source_tournaments.rejected_idx = rejected_candidate.candidate_idx

),

final as (

    select
        'west_of_n' as strategy,
        cast(null as bigint) as pair_seed,
        prompt_id,
        outcome,
        prompt,
        chosen,
        rejected,
        cast(chosen_idx as integer) as chosen_idx,
        cast(rejected_idx as integer) as rejected_idx,
        cast(chosen_reward as double) as chosen_reward,
        cast(rejected_reward as double) as rejected_reward,
        cast(margin as double) as margin,
        cast(1.0 / (1.0 + exp(-margin)) as double) as confidence,
        cast(chosen_logprob_sum as double) as chosen_logprob_sum,
        cast(rejected_logprob_sum as double) as rejected_logprob_sum,
        cast(chosen_logprob_mean as double) as chosen_logprob_mean,
        cast(rejected_logprob_mean as double) as rejected_logprob_mean,
        cast(chosen_num_tokens as integer) as chosen_num_tokens,
        cast(rejected_num_tokens as integer) as rejected_num_tokens,
        cast(n_candidates as integer) as n_candidates,
        policy,
        reward_model,
        cast(null as double) as agreement
    from labelled

)

select * from final
order by prompt_id
