-- `holds` holds only the requests in flight (a few hundred rows at most), and is written twice
-- per request (the hold, then its settlement deletes it). Its two secondary indexes served only
-- the sweeper (every minute) and startup recovery, which scan so small a table as fast without
-- them, while every request paid for two more index entries written and two deleted.
DROP INDEX holds_expires;
DROP INDEX holds_instance;
