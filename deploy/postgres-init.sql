-- Runs once, when the PostgreSQL volume is created: the second database (analytics).
-- The router creates and migrates the tables of both databases itself at start-up.
CREATE DATABASE llm_router_analytics OWNER router;
