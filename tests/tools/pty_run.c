/* tests/tools/pty_run.c: runs a command with a terminal on its stdin, for the tests of what a
 * tool does when a person is typing (ftk generate's chat).
 *
 *   pty_run INPUT CMD [ARG...]
 *
 * CMD's stdin is the slave side of a new pseudo-terminal (canonical mode, no echo); its stdout
 * and stderr are pty_run's own. The bytes of the file INPUT are typed into the terminal as they
 * are (a \004 at the start of a line is Ctrl-D, end of input) as fast as it takes them, what CMD
 * leaves unread when it ends being dropped; pty_run exits with CMD's status (128 + the signal if
 * it was killed). A CMD still running PTY_RUN_TIMEOUT seconds (default 120) after the start is
 * killed, and pty_run says so and exits with 124. */
#include <errno.h>
#include <fcntl.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static void die(const char *what)
{
    fprintf(stderr, "pty_run: %s: %s\n", what, strerror(errno));
    exit(125);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: pty_run INPUT CMD [ARG...]\n");
        return 125;
    }
    FILE *in = fopen(argv[1], "rb");
    if (!in)
        die(argv[1]);
    int master, slave;
    struct termios tio;
    if (openpty(&master, &slave, NULL, NULL, NULL) < 0)
        die("openpty");
    if (tcgetattr(slave, &tio) < 0)
        die("tcgetattr");
    tio.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);   /* nothing typed comes back to be drained */
    if (tcsetattr(slave, TCSANOW, &tio) < 0)
        die("tcsetattr");
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        close(master);
        if (dup2(slave, 0) < 0)
            die("dup2");
        close(slave);
        execvp(argv[2], argv + 2);
        die(argv[2]);
    }
    close(slave);
    /* the input is typed as the terminal takes it (it holds about 4 KB): a blocking write would
     * wait forever on a CMD that exits or stops reading, outside the timeout */
    char *text = NULL;
    size_t len = 0, cap = 0, n;
    do {
        if (len == cap && !(text = realloc(text, cap = cap ? 2 * cap : 4096)))
            die("out of memory");
        len += n = fread(text + len, 1, cap - len, in);
    } while (n > 0);
    fclose(in);
    int fl = fcntl(master, F_GETFL);
    if (fl < 0 || fcntl(master, F_SETFL, fl | O_NONBLOCK) < 0)
        die("fcntl");
    const char *to = getenv("PTY_RUN_TIMEOUT");
    int limit = to && atoi(to) > 0 ? atoi(to) : 120, st;
    size_t off = 0;
    for (int waited_ms = 0;; waited_ms += 10) {
        while (off < len) {
            ssize_t w = write(master, text + off, len - off);
            if (w > 0)
                off += (size_t)w;
            else if (w < 0 && errno == EIO)   /* the terminal is closed: the rest is never read */
                off = len;
            else if (w == 0 || errno == EAGAIN)   /* full: the rest once CMD reads */
                break;
            else if (errno != EINTR)
                die("write to the terminal");
        }
        pid_t got = waitpid(pid, &st, WNOHANG);
        if (got < 0 && errno != EINTR)
            die("waitpid");
        if (got == pid)
            break;
        if (waited_ms >= limit * 1000) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            fprintf(stderr, "pty_run: %s still running after %d s: killed\n", argv[2], limit);
            return 124;
        }
        usleep(10000);
    }
    free(text);
    close(master);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
