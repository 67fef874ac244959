"""Guard: what keeps an instance's sshd safe (knockd/fwknop, firewall, fail2ban) and how it is applied."""
