// SPDX-License-Identifier: GPL-2.0
/*
 * {{name}}: a system call added by kbuild from its "hello" template.
 * Copies a string from user space, logs it, and returns its length.
 * The first argument must be a `const char __user *`.
 */
#include <linux/errno.h>
#include <linux/kernel.h>
#include <linux/printk.h>
#include <linux/syscalls.h>
#include <linux/uaccess.h>

{{define}}
{
	char message[64];
	long length = strncpy_from_user(message, {{arg1}}, sizeof(message));

	if (length < 0)
		return length;
	if (length == sizeof(message))
		return -ENAMETOOLONG;

	pr_info("kbuild: {{name}} called with \"%s\"\n", message);
	return length;
}
