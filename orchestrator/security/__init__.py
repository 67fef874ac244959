"""Guard: knockd/fwknop, the firewall, fail2ban; the knock client and ssh through them."""
