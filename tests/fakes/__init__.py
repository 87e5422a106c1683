"""Local stand-ins for services that cannot run here for real (SendGrid's API), speaking their contract."""
