-- Schema version 4: the notification queue finds QUEUED actions without scanning the history.
CREATE INDEX actions_queued ON actions (id) WHERE state = 'QUEUED';
