-- The log keeps no index by time and none by (source, id).
--
-- appended_at never decreases along seq from now on (writers stamp with
-- the later of the clock and the last stamp), so the events appended at
-- or after a time are found by halving the range of seq. Rows from before
-- a clock stepped back take the latest earlier stamp, so the rule holds
-- for the whole log.
UPDATE events SET appended_at = m.latest
  FROM (SELECT seq, MAX(appended_at) OVER (ORDER BY seq) AS latest FROM events) AS m
  WHERE events.seq = m.seq AND events.appended_at < m.latest;
DROP INDEX events_by_appended_at;
-- Repeats of (source, id) are found through the keys of the window held
-- in memory, loaded from the log when the hub starts.
DROP INDEX events_by_source_id;
