-- Each live call's injections (state as JSON, audio as float32 at the call's rate), so that a
-- process restarted after a crash or a SIGTERM resumes them (streams/resume.py). Written by
-- request threads as injections change; a call's rows go when it ends.
CREATE TABLE IF NOT EXISTS injections (
    call_control_id $text NOT NULL,
    injection_id $text NOT NULL,
    state $text NOT NULL,
    audio $blob,
    PRIMARY KEY (call_control_id, injection_id)
);
