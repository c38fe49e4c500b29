-- length_control/finished_scores: candidate_scores restricted to the candidates that finished
-- (ended with EOS), so that a strategy never picks an answer cut at max_new_tokens. A reward
-- model reads a cut answer's last token mid-sentence, an input unlike any human pair it trained
-- on; a teacher can score such answers high for no reason a human shares (the 256-token decoder
-- run: cut answers +0.57, finished -0.84, docs/results_decoder_t256.md).
--
-- Reads:
--   candidate_pool    (wofn.schemas.CANDIDATE_POOL)     prompt_id, candidate_idx, finish_reason,
--                                                       is_valid (sql/candidate_pool.sql over the
--                                                       candidate_scores below)
--   candidate_scores  (wofn.schemas.CANDIDATE_SCORES)   every column (its rows are passed through)
--
-- Produces (wofn.schemas.CANDIDATE_SCORES, the same columns and order as candidate_scores):
--   prompt_id, candidate_idx, reward, reward_model, reward_model_revision, member_rewards
--
-- Parameters: none.
--
-- Kept: every candidate_scores row, rewards unchanged, of a valid candidate whose finish_reason
-- is 'stop'. Dropped: the rows of cut candidates (to the strategies they are unscored: not
-- valid), of invalid candidates, and of no candidate; a prompt with fewer than two finished
-- candidates gets no pair. Duplicate score rows of a kept candidate stay duplicates, one to one.
-- Ordered by prompt_id, candidate_idx.

with

finished as (

    select
        prompt_id,
        candidate_idx
    from candidate_pool
    where is_valid
        and finish_reason = 'stop'

),

final as (

    select
        candidate_scores.prompt_id,
        candidate_scores.candidate_idx,
        candidate_scores.reward,
        candidate_scores.reward_model,
        candidate_scores.reward_model_revision,
        candidate_scores.member_rewards
    from candidate_scores
    inner join finished
        on candidate_scores.prompt_id = finished.prompt_id
        and candidate_scores.candidate_idx = finished.candidate_idx

)

select * from final
order by prompt_id, candidate_idx
