-- west_of_n_pairs_pairwise: one West-of-N synthetic preference pair per prompt, judged by a
-- pairwise preference model through knockout tournaments (Pace et al. 2024).
--
-- Reads:
--   candidates        (wofn.schemas.CANDIDATES)
--                     prompt_id, candidate_idx, prompt, response, num_tokens,
--                     logprob_sum, logprob_mean, policy
--   tournament_pairs  (wofn.schemas.TOURNAMENT_PAIRS)
--                     prompt_id, chosen_idx, rejected_idx, logit, n_candidates, reward_model
--
-- Produces (wofn.schemas.PAIRS, in this order):
--   prompt_id, prompt, chosen, rejected, chosen_idx, rejected_idx,
--   chosen_reward, rejected_reward, margin, confidence,
--   chosen_logprob_sum, rejected_logprob_sum, chosen_logprob_mean, rejected_logprob_mean,
--   chosen_num_tokens, rejected_num_tokens, n_candidates, policy, reward_model, agreement
--
-- Parameters: none.
--
-- Per tournament row (the best bracket's champion = chosen, the worst bracket's last one =
-- rejected, logit = the teacher's symmetrized logit that chosen beats rejected, from their
-- direct comparison):
--   A pair is emitted only when logit is finite and > 0 strictly (the teacher itself prefers
--   the chosen response in the direct comparison), chosen_idx <> rejected_idx, both candidate
--   rows exist, and the two responses differ as text.
-- A pairwise teacher gives no per-response rewards, so the logit is split in half:
--   chosen_reward = logit / 2, rejected_reward = -logit / 2 (not pointwise rewards!), so that
--   margin = chosen_reward - rejected_reward = logit (> 0) and
--   confidence = sigmoid(margin) = 1 / (1 + exp(-logit)), in (0.5, 1] = the teacher's own
--   P(chosen > rejected), exactly as for the pointwise pairs.
-- logprob_* and num_tokens are the policy's (temperature 1, nats) for each response;
-- n_candidates = the tournament's number of candidates; policy comes from the chosen
-- candidate's row, reward_model from the tournament row; agreement is NULL (one pairwise teacher).
-- Duplicate rows (the same (prompt_id, candidate_idx) in candidates, the same prompt_id in
-- tournament_pairs) count once, so a prompt never gets two pairs: the first row is kept,
-- ordered by its columns. Pairs only come from west_of_n with a pairwise teacher; why the other
-- prompts have none is counted by sql/selection_report_pairwise.sql.
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

paired as (

    select
        source_tournaments.prompt_id,
        chosen_candidate.prompt,
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
        source_tournaments.n_candidates,
        chosen_candidate.policy,
        source_tournaments.reward_model
    from source_tournaments
    inner join source_candidates as chosen_candidate
        on source_tournaments.prompt_id = chosen_candidate.prompt_id
        and source_tournaments.chosen_idx = chosen_candidate.candidate_idx
    inner join source_candidates as rejected_candidate
        on source_tournaments.prompt_id = rejected_candidate.prompt_id
        and source_tournaments.rejected_idx = rejected_candidate.candidate_idx
    where source_tournaments.logit is not null
        and isfinite(source_tournaments.logit)
        and source_tournaments.logit > 0
        and source_tournaments.chosen_idx <> source_tournaments.rejected_idx
        and chosen_candidate.response <> rejected_candidate.response

),

final as (

    select
        prompt_id,
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
    from paired

)

select * from final
order by prompt_id
