//! Webex cloud simulator.
