"""Guarding sshd on every image: knockd or fwknop, a default-drop firewall, fail2ban.

Rooms: ``secrets`` (knock sequences and SPA keys, generated and kept in a 0600 file),
``render`` (the files each host gets, from templates/guard/), ``validate`` (our checks and
the daemons' own, in throwaway network namespaces), ``jobs`` (``inv guard.render``),
``knock`` (the knock and SPA client), ``access`` (``inv knock``, ``inv ssh``) and ``deadman``
(a firewall applied with a revert armed on the host, cancelled only over a new connection).
"""
